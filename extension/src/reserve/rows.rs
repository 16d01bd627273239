//! Single rows found, locked, inserted and updated by index, without planning or starting a
//! statement: the building blocks of `reserve_item`'s fast path (fast_path.rs says why it needs them).
//!
//! Reads are index scans under the caller's snapshot, as the executor's index scans are. Writes go
//! through PostgreSQL's own single-row helpers (`ExecSimpleRelationInsert` / `ExecSimpleRelationUpdate`,
//! the ones logical replication applies rows with), so constraints, every index (partial and unique
//! ones included) and triggers are handled as an INSERT or UPDATE statement would handle them.
//!
//! Everything here names tables and indexes, and the columns of an index, by name: `Table::open` and
//! `Index::open` answer None when the schema is not the one this code was written for, and the fast
//! path then hands the call to the full rules instead of reading the wrong columns.

use pgrx::pg_sys;
use std::ffi::CStr;

/// The `dropstock` schema's OID, or None when it is missing.
pub(super) unsafe fn schema() -> Option<pg_sys::Oid> {
    // SAFETY: a syscache lookup with a NUL-terminated name.
    let oid = unsafe { pg_sys::get_namespace_oid(c"dropstock".as_ptr(), true) };
    (oid != pg_sys::InvalidOid).then_some(oid)
}

unsafe fn relation_id(schema: pg_sys::Oid, name: &CStr) -> Option<pg_sys::Oid> {
    // SAFETY: a syscache lookup with a NUL-terminated name.
    let oid = unsafe { pg_sys::get_relname_relid(name.as_ptr(), schema) };
    (oid != pg_sys::InvalidOid).then_some(oid)
}

/// The number of the column called `name` in `desc`, or None.
pub(super) unsafe fn column(desc: pg_sys::TupleDesc, name: &CStr) -> Option<i32> {
    // SAFETY: desc is a valid tuple descriptor with natts attributes.
    unsafe {
        let attrs = (*desc).attrs.as_slice((*desc).natts as usize);
        attrs
            .iter()
            .position(|a| !a.attisdropped && CStr::from_ptr(a.attname.data.as_ptr()) == name)
            .map(|i| i as i32 + 1)
    }
}

/// A table of the schema, open with a lock that is kept until the transaction ends (as the executor
/// keeps the locks of the tables a statement used).
pub(super) struct Table(pub(super) pg_sys::Relation);

impl Table {
    pub(super) unsafe fn open(schema: pg_sys::Oid, name: &CStr, lock: u32) -> Option<Table> {
        // SAFETY: an existing table's OID; the lock mode is one of PostgreSQL's.
        unsafe {
            let oid = relation_id(schema, name)?;
            let rel = pg_sys::table_open(oid, lock as pg_sys::LOCKMODE);
            if (*(*rel).rd_rel).relkind != pg_sys::RELKIND_RELATION as std::ffi::c_char {
                pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
                return None;
            }
            Some(Table(rel))
        }
    }

    pub(super) fn desc(&self) -> pg_sys::TupleDesc {
        // SAFETY: an open relation.
        unsafe { (*self.0).rd_att }
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        // SAFETY: opened by Table::open; the lock stays until the transaction ends.
        unsafe { pg_sys::table_close(self.0, pg_sys::NoLock as pg_sys::LOCKMODE) }
    }
}

/// An index of a table, open for scans, whose key columns were checked to be the named ones in order.
pub(super) struct Index {
    rel: pg_sys::Relation,
}

impl Index {
    pub(super) unsafe fn open(
        schema: pg_sys::Oid,
        table: &Table,
        name: &CStr,
        columns: &[&CStr],
    ) -> Option<Index> {
        // SAFETY: an existing index's OID, opened with AccessShareLock as the executor's scans do.
        unsafe {
            let oid = relation_id(schema, name)?;
            let rel = pg_sys::index_open(oid, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
            let index = Index { rel };
            let form = (*rel).rd_index;
            // Not one being built or dropped concurrently: such an index may lack rows.
            if (*form).indrelid != (*table.0).rd_id
                || !(*form).indisvalid
                || !(*form).indislive
                || ((*form).indnkeyatts as usize) < columns.len()
                || (*(*rel).rd_rel).relam != pg_sys::BTREE_AM_OID
            {
                return None;
            }
            let keys = (*form).indkey.values.as_slice(columns.len());
            for (key, name) in keys.iter().zip(columns) {
                if Some(*key as i32) != column(table.desc(), name) {
                    return None;
                }
            }
            Some(index)
        }
    }
}

impl Drop for Index {
    fn drop(&mut self) {
        // SAFETY: opened by Index::open; the lock stays until the transaction ends.
        unsafe { pg_sys::index_close(self.rel, pg_sys::NoLock as pg_sys::LOCKMODE) }
    }
}

/// One condition of an index scan: index column `column` compared with `value` by the B-tree operator
/// whose function is `procedure` and whose strategy is `strategy`.
pub(super) struct Key {
    pub(super) column: i16,
    pub(super) strategy: u16,
    pub(super) procedure: u32,
    pub(super) value: pg_sys::Datum,
}

impl Key {
    pub(super) fn eq(column: i16, procedure: u32, value: pg_sys::Datum) -> Key {
        Key {
            column,
            strategy: pg_sys::BTEqualStrategyNumber as u16,
            procedure,
            value,
        }
    }
}

/// An index scan of `table` by `index` for `keys` under `snapshot`, positioned before its first entry.
/// The scan keys are built with the index's own collations, as the planner builds them, so the
/// B-tree descends by the index's order.
unsafe fn begin_scan(
    table: &Table,
    index: &Index,
    snapshot: pg_sys::Snapshot,
    keys: &[Key],
) -> pg_sys::IndexScanDesc {
    // SAFETY: an open table and index; index_rescan copies the keys into the scan.
    unsafe {
        let mut scan_keys: Vec<pg_sys::ScanKeyData> = Vec::with_capacity(keys.len());
        for key in keys {
            let mut entry = std::mem::MaybeUninit::<pg_sys::ScanKeyData>::zeroed();
            pg_sys::ScanKeyEntryInitialize(
                entry.as_mut_ptr(),
                0,
                key.column,
                key.strategy,
                pg_sys::InvalidOid,
                *(*index.rel).rd_indcollation.add(key.column as usize - 1),
                pg_sys::regproc::from(key.procedure),
                key.value,
            );
            scan_keys.push(entry.assume_init());
        }
        let scan = pg_sys::index_beginscan(table.0, index.rel, snapshot, keys.len() as i32, 0);
        pg_sys::index_rescan(
            scan,
            scan_keys.as_mut_ptr(),
            keys.len() as i32,
            std::ptr::null_mut(),
            0,
        );
        scan
    }
}

/// Calls `each` with every row of `table` that `index` finds for `keys` and `snapshot` sees, in index
/// order, until `each` returns false. The slot `each` gets holds the row until `each` returns.
pub(super) unsafe fn probe(
    table: &Table,
    index: &Index,
    snapshot: pg_sys::Snapshot,
    keys: &[Key],
    mut each: impl FnMut(*mut pg_sys::TupleTableSlot) -> bool,
) {
    // SAFETY: as begin_scan; the slot and the scan are let go of here.
    unsafe {
        let slot = pg_sys::table_slot_create(table.0, std::ptr::null_mut());
        let scan = begin_scan(table, index, snapshot, keys);
        while pg_sys::index_getnext_slot(scan, pg_sys::ScanDirection::ForwardScanDirection, slot) {
            if !each(slot) {
                break;
            }
        }
        pg_sys::index_endscan(scan);
        pg_sys::ExecDropSingleTupleTableSlot(slot);
    }
}

/// Whether `index` finds a row of `table` for `keys` that `snapshot` sees, reading the row only when
/// the visibility map cannot vouch for its page, as an index-only scan does: on a table bigger than
/// the buffer cache (a million buyers), reading each row would be a random read per call.
pub(super) unsafe fn exists(
    table: &Table,
    index: &Index,
    snapshot: pg_sys::Snapshot,
    keys: &[Key],
) -> bool {
    // SAFETY: as begin_scan; an MVCC snapshot, for which an all-visible page's rows are visible.
    unsafe {
        let slot = pg_sys::table_slot_create(table.0, std::ptr::null_mut());
        let scan = begin_scan(table, index, snapshot, keys);
        let mut map = pg_sys::InvalidBuffer as pg_sys::Buffer;
        let mut found = false;
        loop {
            let tid = pg_sys::index_getnext_tid(scan, pg_sys::ScanDirection::ForwardScanDirection);
            if tid.is_null() {
                break;
            }
            let block = ((*tid).ip_blkid.bi_hi as u32) << 16 | (*tid).ip_blkid.bi_lo as u32;
            let all_visible = pg_sys::visibilitymap_get_status(table.0, block, &mut map) as u32
                & pg_sys::VISIBILITYMAP_ALL_VISIBLE
                != 0;
            if all_visible || pg_sys::index_fetch_heap(scan, slot) {
                found = true;
                break;
            }
        }
        if map != pg_sys::InvalidBuffer as pg_sys::Buffer {
            pg_sys::ReleaseBuffer(map);
        }
        pg_sys::index_endscan(scan);
        pg_sys::ExecDropSingleTupleTableSlot(slot);
        found
    }
}

/// Column `number` of the row in `slot`, or None when it is NULL.
pub(super) unsafe fn value(
    slot: *mut pg_sys::TupleTableSlot,
    number: i32,
) -> Option<pg_sys::Datum> {
    let mut isnull = false;
    // SAFETY: a slot holding a row of a table with at least `number` columns.
    let datum = unsafe { pg_sys::slot_getattr(slot, number, &mut isnull) };
    (!isnull).then_some(datum)
}

/// What `lock` found.
pub(super) enum Locked {
    /// The row, as it stands now, locked by this transaction, in the slot.
    Row,
    /// Locked by a transaction in progress, or gone: passed over, as `SKIP LOCKED` passes it over.
    Skipped,
}

/// `FOR UPDATE SKIP LOCKED` of the row in `found`, into `into`: follows the row to its latest version,
/// as a statement does in READ COMMITTED, and never waits.
pub(super) unsafe fn lock(
    table: &Table,
    found: *mut pg_sys::TupleTableSlot,
    snapshot: pg_sys::Snapshot,
    into: *mut pg_sys::TupleTableSlot,
) -> Locked {
    // SAFETY: found holds a row of table; into is a slot of the table's own kind.
    unsafe {
        let mut tid = (*found).tts_tid;
        let mut failure = std::mem::MaybeUninit::<pg_sys::TM_FailureData>::zeroed();
        let result = pg_sys::table_tuple_lock(
            table.0,
            &mut tid,
            snapshot,
            into,
            pg_sys::GetCurrentCommandId(true),
            pg_sys::LockTupleMode::LockTupleExclusive,
            pg_sys::LockWaitPolicy::LockWaitSkip,
            pg_sys::TUPLE_LOCK_FLAG_FIND_LAST_VERSION as u8,
            failure.as_mut_ptr(),
        );
        if result == pg_sys::TM_Result::TM_Ok {
            Locked::Row
        } else {
            Locked::Skipped
        }
    }
}

/// An executor state for single-row writes, its after-trigger query level open: what a statement
/// would have around its writes. `finish` fires the queued after-row triggers (constraint checks) and
/// frees it.
pub(super) struct Writes {
    estate: *mut pg_sys::EState,
    targets: Vec<*mut pg_sys::ResultRelInfo>,
}

impl Writes {
    pub(super) unsafe fn start(snapshot: pg_sys::Snapshot) -> Writes {
        // SAFETY: inside a transaction, with an active snapshot.
        unsafe {
            let estate = pg_sys::CreateExecutorState();
            (*estate).es_snapshot = snapshot;
            (*estate).es_output_cid = pg_sys::GetCurrentCommandId(true);
            pg_sys::AfterTriggerBeginQuery();
            Writes {
                estate,
                targets: Vec::new(),
            }
        }
    }

    /// The table as a target of writes, its indexes open.
    pub(super) unsafe fn target(&mut self, table: &Table) -> *mut pg_sys::ResultRelInfo {
        // SAFETY: a table opened with RowExclusiveLock; the ResultRelInfo lives in the estate's memory.
        unsafe {
            let previous = pg_sys::MemoryContextSwitchTo((*self.estate).es_query_cxt);
            let info = pg_sys::palloc0(std::mem::size_of::<pg_sys::ResultRelInfo>())
                as *mut pg_sys::ResultRelInfo;
            pg_sys::InitResultRelInfo(info, table.0, 0, std::ptr::null_mut(), 0);
            pg_sys::ExecOpenIndices(info, false);
            pg_sys::MemoryContextSwitchTo(previous);
            self.targets.push(info);
            info
        }
    }

    /// Inserts the row in `slot` (a virtual slot of the table's row type).
    pub(super) unsafe fn insert(
        &mut self,
        target: *mut pg_sys::ResultRelInfo,
        slot: *mut pg_sys::TupleTableSlot,
    ) {
        // SAFETY: target made by `target`, slot holding a complete row.
        unsafe { pg_sys::ExecSimpleRelationInsert(target, self.estate, slot) }
    }

    /// Replaces the row in `locked` (locked by this transaction) with the row in `slot`.
    pub(super) unsafe fn update(
        &mut self,
        target: *mut pg_sys::ResultRelInfo,
        locked: *mut pg_sys::TupleTableSlot,
        slot: *mut pg_sys::TupleTableSlot,
    ) {
        // SAFETY: as ExecSimpleRelationUpdate requires: the old row's slot carries its tid; the EPQ
        // state is only used by before-row triggers.
        unsafe {
            let mut epq = std::mem::MaybeUninit::<pg_sys::EPQState>::zeroed();
            pg_sys::EvalPlanQualInit(
                epq.as_mut_ptr(),
                self.estate,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                -1,
            );
            pg_sys::ExecSimpleRelationUpdate(target, self.estate, epq.as_mut_ptr(), locked, slot);
            pg_sys::EvalPlanQualEnd(epq.as_mut_ptr());
        }
    }

    pub(super) unsafe fn finish(self) {
        // SAFETY: the end of what `start` began, in the same (sub)transaction.
        unsafe {
            pg_sys::AfterTriggerEndQuery(self.estate);
            for &target in &self.targets {
                pg_sys::ExecCloseIndices(target);
            }
            pg_sys::ExecResetTupleTable((*self.estate).es_tupleTable, false);
            pg_sys::FreeExecutorState(self.estate);
        }
    }
}

/// An empty virtual row of `table`: every column NULL until `set`, then `ExecStoreVirtualTuple`.
pub(super) unsafe fn new_row(table: &Table) -> *mut pg_sys::TupleTableSlot {
    // SAFETY: the table's own descriptor; the slot is dropped with ExecDropSingleTupleTableSlot.
    unsafe {
        let slot = pg_sys::MakeSingleTupleTableSlot(table.desc(), &pg_sys::TTSOpsVirtual);
        for i in 0..(*table.desc()).natts as usize {
            *(*slot).tts_values.add(i) = pg_sys::Datum::from(0);
            *(*slot).tts_isnull.add(i) = true;
        }
        slot
    }
}

/// Sets column `number` of the virtual row in `slot` (before `ExecStoreVirtualTuple`).
pub(super) unsafe fn set(slot: *mut pg_sys::TupleTableSlot, number: i32, datum: pg_sys::Datum) {
    // SAFETY: a virtual slot with at least `number` columns.
    unsafe {
        *(*slot).tts_values.add(number as usize - 1) = datum;
        *(*slot).tts_isnull.add(number as usize - 1) = false;
    }
}
