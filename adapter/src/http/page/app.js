// The live drop page. Plain JavaScript with no build step: the adapter serves this file as it is.
//
// Data comes from the REST API (`/api/...`) and stays current through the `/ws` feed. Every decision about
// stock and holds is the server's; this page only shows what it was told and says each outcome in words.
'use strict';

const $ = (selector, root = document) => root.querySelector(selector);

// `/?drop=<id>` shows one drop only, with a feed filtered to it: a link that can be shared for one drop.
const onlyDrop = new URLSearchParams(location.search).get('drop');

const state = {
  drops: new Map(), // drop id → the drop as the API spells it, plus `seq` of the last stock message
  cards: new Map(), // drop id → its <li>
  holds: new Map(), // drop id → { id, expiresAt (ms, server clock), status, variant, quantity, extensions }
  choices: new Map(), // drop id → { size (label or undefined), quantity }: what the buyer picked
  outcomes: new Map(), // drop id → { text, tone }, kept across re-renders
  unlisted: new Set(), // drop ids the feed mentioned that a reload did not list (ended drops)
  waiting: new Map(), // drop id → buyers in its waiting list, as the feed last said
  lineSeqs: new Map(), // drop id → the feed's count of changes to its line (a change means: ask your place)
  positions: new Map(), // drop id → this buyer's place in its line (1 = next), absent when not waiting
  draws: new Map(), // drop id of a draw (`mode: 'draw'`) → the draw as GET /api/drops/{id}/draw answers
  entered: new Set(), // drop ids whose draw this buyer entered
  buyer: null, // { id, username, inboxKey }
  snapshotAt: 0, // local time the feed's last snapshot arrived
};

// ---- the server's clock --------------------------------------------------------------------------------
// Hold expiry and drop openings are decided by the database clock, and this device's clock may be off by
// seconds or minutes. The offset (server minus local) is kept as an interval that every response narrows:
// a Date header (whole seconds) says the server's time was in [Date, Date + 1 s) somewhere between sending
// and receiving; a fresh hold's createdAt (milliseconds) pins it to within one round trip.
const clock = { low: -Infinity, high: Infinity };

function narrowOffset(low, high) {
  const next = { low: Math.max(clock.low, low), high: Math.min(clock.high, high) };
  // Disagreeing evidence means a clock jumped (or the database and the adapter disagree): trust the newest.
  Object.assign(clock, next.low <= next.high ? next : { low, high });
}

function offsetMs() {
  if (clock.low === -Infinity) return 0;
  return (clock.low + clock.high) / 2;
}

const serverNow = () => Date.now() + offsetMs();

// ---- talking to the API ----------------------------------------------------------------------------------
// Resolves to { ok, status, data, message, code, sentAt, receivedAt }; never throws, so every caller has
// one outcome to put into words.
async function api(method, path, body, token) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (token) headers.Authorization = `Bearer ${token}`;
  const sentAt = Date.now();
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store',
    });
  } catch {
    return { ok: false, code: 'network', message: 'The server cannot be reached. Check your connection and try again.' };
  }
  const receivedAt = Date.now();
  const date = Date.parse(response.headers.get('Date') || '');
  if (!Number.isNaN(date)) narrowOffset(date - receivedAt, date + 1000 - sentAt);
  let json = null;
  try {
    json = await response.json();
  } catch {
    // Not JSON (a proxy's error page): fall through to the status.
  }
  if (response.ok && json && json.success) {
    return { ok: true, status: response.status, data: json.data, message: json.message, sentAt, receivedAt };
  }
  return {
    ok: false,
    status: response.status,
    code: (json && json.code) || `http_${response.status}`,
    message: (json && json.message) || `The server answered ${response.status}.`,
  };
}

// Each refusal in words a buyer understands. The server's own message names ids; these name what happened
// and what to do next. Codes not listed here (invalid input, mostly) fall back to the server's message.
function describeRefusal(result, drop) {
  switch (result.code) {
    case 'DS001': return 'This drop no longer exists.';
    case 'DS002': return 'The server does not know your buyer name any more. Enter it again.';
    case 'DS003': return 'That hold no longer exists. Reserve again.';
    case 'DS010': return drop ? `Not started yet: it opens in ${duration(Date.parse(drop.startsAt) - serverNow())}.` : 'Not started yet.';
    case 'DS011': return 'This drop has ended.';
    case 'DS012': return 'Choose a size first.';
    case 'DS013': return 'That size is not sold in this drop.';
    case 'DS020': return drop && drop.variants
      ? 'Not enough left in that size: every unit is held or sold. Join the waiting list to get your turn when units come back.'
      : 'Sold out: every unit is held or sold. Join the waiting list to get your turn when units come back.';
    case 'DS021': return 'Limit reached: you already have as many of this drop as one buyer may.';
    case 'DS030': return 'Your hold expired before you purchased, so the unit went back on sale. Reserve again if any are left.';
    case 'DS031': return 'That hold belongs to another buyer.';
    case 'DS032': return 'That hold was cancelled. Reserve again if any are left.';
    case 'DS033': return 'Already purchased: there is no hold left to cancel.';
    case 'DS034': return 'This hold cannot be extended any more. Purchase it before the countdown ends.';
    case 'DS040': return 'That name is taken by another buyer. Pick a different one.';
    case 'DS014': return 'This drop is a draw: enter the draw while it is open instead.';
    case 'DS015': return 'This drop is not a draw: reserve it instead.';
    case 'DS016': return 'This draw has already been drawn.';
    case 'DS017': return 'The draw is still taking entries.';
    case 'DS022': return `You let a hold lapse while others were waiting, so others get a turn first. ${result.message}`;
    case 'DS023': return 'Units are free right now: reserve one instead of waiting.';
    case 'DS024': return 'You already hold this drop: purchase it instead of waiting.';
    case '55P03':
    case '40001': return 'The drop is very busy right now. Try again.';
    case 'unavailable': return 'The server cannot reach its database right now. Try again shortly.';
    default: return result.message;
  }
}

// ---- formatting --------------------------------------------------------------------------------------------
const priceFormat = new Intl.NumberFormat(undefined, { minimumFractionDigits: 2, maximumFractionDigits: 2 });
const countFormat = new Intl.NumberFormat();
const timeFormat = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit' });

// "1 d 2 h", "2 h 05 m", "4 m 09 s", "9 s": precise enough to plan by, short enough to read at a glance.
function duration(ms) {
  const total = Math.max(0, Math.ceil(ms / 1000));
  const d = Math.floor(total / 86400);
  const h = Math.floor((total % 86400) / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = total % 60;
  const two = (n) => String(n).padStart(2, '0');
  if (d > 0) return `${d} d ${h} h`;
  if (h > 0) return `${h} h ${two(m)} m`;
  if (m > 0) return `${m} m ${two(s)} s`;
  return `${s} s`;
}

// The hold countdown as a clock face, "0:42": it moves every second and is read at a glance.
function countdown(ms) {
  const total = Math.max(0, Math.ceil(ms / 1000));
  return `${Math.floor(total / 60)}:${String(total % 60).padStart(2, '0')}`;
}

// ---- the buyer ---------------------------------------------------------------------------------------------
// The chosen buyer and every buyer this device registered are remembered, so a reload or a switch back
// needs no server round trip. There is no password: without buyer tokens the API trusts the userId it is
// sent, and a name is only known here if this device registered it.
const STORE_BUYER = 'dropstock.buyer';
const STORE_KNOWN = 'dropstock.knownBuyers';

function readStore(key, fallback) {
  try {
    return JSON.parse(localStorage.getItem(key)) ?? fallback;
  } catch {
    return fallback; // storage disabled or corrupted: start afresh rather than break the page
  }
}

function writeStore(key, value) {
  try {
    localStorage.setItem(key, JSON.stringify(value));
  } catch {
    // Private mode or a full quota: the buyer is remembered for this visit only.
  }
}

function knownBuyers() {
  const known = readStore(STORE_KNOWN, []);
  return Array.isArray(known) ? known.filter((b) => b && b.id && b.username) : [];
}

function setBuyer(buyer) {
  state.buyer = buyer;
  if (buyer) {
    writeStore(STORE_BUYER, buyer);
    const others = knownBuyers().filter((b) => b.id !== buyer.id);
    writeStore(STORE_KNOWN, [buyer, ...others].slice(0, 20));
  } else {
    try { localStorage.removeItem(STORE_BUYER); } catch { /* see writeStore */ }
  }
  // Holds, places in line and draw entries belong to the buyer who made them.
  state.holds.clear();
  state.outcomes.clear();
  state.positions.clear();
  state.entered.clear();
  positionQueue.checked.clear();
  renderBuyer();
  for (const id of state.drops.keys()) renderDrop(id);
  subscribeInbox();
  if (buyer) {
    loadHolds();
    for (const id of state.drops.keys()) refreshPosition(id);
  }
}

function renderBuyer() {
  const form = $('#buyer-form');
  const current = $('#buyer-current');
  form.hidden = Boolean(state.buyer);
  current.hidden = !state.buyer;
  $('#buyer-name').textContent = state.buyer ? state.buyer.username : '';
  const list = $('#known-buyers');
  list.replaceChildren(...knownBuyers().map((b) => Object.assign(document.createElement('option'), { value: b.username })));
}

async function chooseBuyer(event) {
  event.preventDefault();
  const input = $('#username');
  const username = input.value.trim();
  const outcome = $('#buyer-outcome');
  if (!username) return;
  const known = knownBuyers().find((b) => b.username === username);
  if (known) {
    setBuyer(known);
    outcome.textContent = '';
    $('#buyer-switch').focus();
    return;
  }
  const button = $('#buyer-form button');
  button.disabled = true;
  const result = await api('POST', '/api/users', { username });
  button.disabled = false;
  if (!result.ok) {
    outcome.textContent = describeRefusal(result);
    input.focus();
    return;
  }
  // The inbox key is answered this once: kept on this device, it opens the buyer's offers on the feed.
  setBuyer({ id: result.data.id, username: result.data.username, inboxKey: result.data.inboxKey });
  outcome.textContent = '';
  $('#buyer-switch').focus();
}

function switchBuyer() {
  setBuyer(null);
  $('#buyer-outcome').textContent = 'Pick a name to buy with.';
  $('#username').value = '';
  $('#username').focus();
}

// ---- drops: state ------------------------------------------------------------------------------------------
function replaceDrops(drops) {
  // A new map, so its order is the server's (opening time) for drops old and new.
  const next = new Map();
  for (const drop of drops) {
    const previous = state.drops.get(drop.id);
    next.set(drop.id, { ...drop, seq: previous ? previous.seq : undefined });
    state.waiting.set(drop.id, drop.waiting || 0);
  }
  // A draw's offers come after it closes, when the drop is no longer listed: a drop this buyer holds or
  // entered stays on screen until they are done with it.
  for (const [id, drop] of state.drops) {
    if (!next.has(id) && (liveHold(id) || state.entered.has(id))) next.set(id, drop);
  }
  for (const id of state.drops.keys()) {
    if (!next.has(id)) {
      state.holds.delete(id);
      state.outcomes.delete(id);
    }
  }
  state.drops = next;
  renderList();
}

let reloading = null;
let reloadAgain = false;

// Reloads the drops over REST. Calls while one is under way coalesce into one more reload after it, so a
// burst of resyncs costs two requests, not one per message.
async function reload() {
  if (reloading) {
    reloadAgain = true;
    return reloading;
  }
  reloading = (async () => {
    do {
      reloadAgain = false;
      const askedAt = Date.now();
      const result = await api('GET', onlyDrop ? `/api/drops/${encodeURIComponent(onlyDrop)}` : '/api/drops');
      // A snapshot read after this request was sent is at least as new, and feed messages may already
      // have moved it on: an answer that old would put stale stock back on screen.
      if (result.ok && state.snapshotAt > askedAt) continue;
      if (result.ok) {
        replaceDrops(onlyDrop ? [result.data] : result.data);
        $('#drops-outcome').textContent = '';
      } else {
        $('#drops-outcome').textContent = `Could not load the drops: ${describeRefusal(result)}`;
      }
    } while (reloadAgain);
    reloading = null;
  })();
  return reloading;
}

function addPurchase(drop, purchase) {
  if (drop.purchases.some((p) => p.id === purchase.id)) return; // the feed and our own answer both bring it
  drop.purchases = [purchase, ...drop.purchases]
    .sort((a, b) => Date.parse(b.createdAt) - Date.parse(a.createdAt))
    .slice(0, 3);
}

function onFeedMessage(message) {
  switch (message.type) {
    case 'snapshot':
      state.snapshotAt = Date.now();
      replaceDrops(message.drops);
      break;
    case 'stock': {
      const drop = state.drops.get(message.dropId);
      if (!drop) {
        // A drop this page has not seen (created since it loaded): fetch the list with it. Once per drop:
        // an ended drop is still published for a while but never listed, and must not cause a reload a tick.
        if (!onlyDrop && !state.unlisted.has(message.dropId)) {
          state.unlisted.add(message.dropId);
          reload();
        }
        return;
      }
      // seq rises per drop; an older or repeated message must not move the stock backwards.
      if (drop.seq !== undefined && message.seq <= drop.seq) return;
      drop.seq = message.seq;
      drop.availableStock = message.availableStock;
      const lineMoved = message.lineSeq !== undefined && message.lineSeq !== state.lineSeqs.get(drop.id);
      if (message.lineSeq !== undefined) state.lineSeqs.set(drop.id, message.lineSeq);
      if (message.waiting !== undefined && (lineMoved || message.waiting !== state.waiting.get(drop.id))) {
        state.waiting.set(drop.id, message.waiting);
        // The line moved: this buyer's place may have too. A line first heard of (after a reload) is
        // asked about once, in case this buyer is in it.
        if (state.positions.has(drop.id) || !positionQueue.checked.has(drop.id)) refreshPosition(drop.id);
      }
      if (message.totalStock !== undefined) drop.totalStock = message.totalStock;
      // A sized drop's message names the sizes that changed, by label.
      for (const change of message.variants || []) {
        const size = (drop.variants || []).find((v) => v.label === change.label);
        if (size) size.availableStock = change.availableStock;
      }
      renderDrop(drop.id);
      break;
    }
    case 'purchase': {
      const drop = state.drops.get(message.dropId);
      if (!drop) return; // the stock message before it already asked for a reload
      addPurchase(drop, { id: message.id, createdAt: message.createdAt, user: message.user });
      renderDrop(drop.id);
      break;
    }
    case 'offer':
      offerArrived(message);
      break;
    case 'subscribed':
      break;
    case 'resync':
      reload();
      // An offer may have been missed too: the holds are the truth.
      loadHolds();
      break;
    case 'paused':
      break; // shown by the connection line
    default:
      // Newer servers may send more kinds of message; ignoring them keeps this page working.
      break;
  }
}

// ---- drops: rendering --------------------------------------------------------------------------------------
function phase(drop, now) {
  if (drop.endsAt && Date.parse(drop.endsAt) <= now) return 'ended';
  if (Date.parse(drop.startsAt) > now) return 'upcoming';
  if (drop.availableStock <= 0) return 'soldout';
  return 'open';
}

function liveHold(dropId) {
  const hold = state.holds.get(dropId);
  return hold && hold.status === 'reserved' ? hold : null;
}

function renderList() {
  const list = $('#drops');
  for (const [id, card] of state.cards) {
    if (!state.drops.has(id)) {
      card.remove();
      state.cards.delete(id);
    }
  }
  // Cards are reused and only moved when out of place: moving a card would take keyboard focus off it.
  let cursor = list.firstElementChild;
  for (const id of state.drops.keys()) {
    if (!state.cards.has(id)) state.cards.set(id, createCard(id));
    const card = state.cards.get(id);
    if (card === cursor) cursor = cursor.nextElementSibling;
    else list.insertBefore(card, cursor);
    renderDrop(id);
  }
  $('#drops-empty').hidden = state.drops.size > 0;
}

function createCard(dropId) {
  const card = $('#drop-template').content.firstElementChild.cloneNode(true);
  card.dataset.dropId = dropId;
  const heading = $('.drop-name', card);
  heading.id = `drop-${dropId}`;
  $('article', card).setAttribute('aria-labelledby', heading.id);
  $('.reserve', card).addEventListener('click', () => reserve(dropId));
  $('.purchase', card).addEventListener('click', () => purchase(dropId));
  $('.cancel', card).addEventListener('click', () => cancel(dropId));
  $('.extend', card).addEventListener('click', () => extend(dropId));
  $('.join', card).addEventListener('click', () => joinLine(dropId));
  $('.leave', card).addEventListener('click', () => leaveLine(dropId));
  $('.enter', card).addEventListener('click', () => enterDraw(dropId));
  $('.size-options', card).addEventListener('change', (event) => {
    choice(dropId).size = event.target.value;
    renderDrop(dropId);
  });
  $('.quantity', card).addEventListener('change', (event) => {
    choice(dropId).quantity = Number(event.target.value);
  });
  return card;
}

function choice(dropId) {
  if (!state.choices.has(dropId)) state.choices.set(dropId, { size: undefined, quantity: 1 });
  return state.choices.get(dropId);
}

// The size picker: one radio per size, kept (not rebuilt) across renders so focus and the pick stay put;
// a sold-out size is shown and disabled, and comes back when units do.
function renderSizes(drop, card) {
  const sizes = drop.variants || [];
  const fieldset = $('.sizes', card);
  fieldset.hidden = sizes.length === 0;
  if (sizes.length === 0) return;
  const options = $('.size-options', card);
  const key = sizes.map((v) => v.label).join('\u0000');
  if (options.dataset.key !== key) {
    options.dataset.key = key;
    options.replaceChildren(...sizes.map((v) => {
      const label = document.createElement('label');
      const radio = Object.assign(document.createElement('input'), { type: 'radio', name: `size-${drop.id}`, value: v.label });
      label.append(radio, ' ', v.label);
      return label;
    }));
  }
  const picked = choice(drop.id).size;
  for (const [i, label] of [...options.children].entries()) {
    const soldOut = sizes[i].availableStock <= 0;
    const radio = $('input', label);
    radio.disabled = soldOut;
    radio.checked = radio.value === picked;
    label.classList.toggle('soldout', soldOut);
    label.title = soldOut ? 'Sold out' : `${countFormat.format(sizes[i].availableStock)} left`;
  }
}

// The quantity selector, when one buyer may take more than one unit.
function renderQuantity(drop, card) {
  const most = Math.min(drop.perUserLimit || 1, 10);
  const line = $('.quantity-line', card);
  line.hidden = most <= 1;
  if (most <= 1) return;
  const select = $('.quantity', card);
  if (select.options.length !== most) {
    select.replaceChildren(...Array.from({ length: most }, (_, i) => Object.assign(document.createElement('option'), { value: String(i + 1), textContent: String(i + 1) })));
  }
  select.value = String(choice(drop.id).quantity);
}

function renderDrop(dropId) {
  const drop = state.drops.get(dropId);
  const card = state.cards.get(dropId);
  if (!drop || !card) return;
  const now = serverNow();
  const current = phase(drop, now);
  const hold = liveHold(dropId);
  card.dataset.state = current;
  card.dataset.holding = hold ? 'yes' : 'no';

  $('.drop-name', card).textContent = drop.name;
  $('.drop-price', card).textContent = priceFormat.format(drop.price);
  $('.available', card).textContent = countFormat.format(drop.availableStock);
  $('.total', card).textContent = countFormat.format(drop.totalStock);
  const share = drop.totalStock > 0 ? drop.availableStock / drop.totalStock : 0;
  $('.bar-fill', card).style.width = `${Math.round(share * 100)}%`;

  const draw = drop.mode === 'draw' ? state.draws.get(dropId) || { entries: 0, order: [] } : null;
  const badge = $('.badge', card);
  badge.textContent = draw ? {
    ended: draw.drawnAt ? 'Drawn' : 'Entries closed',
    upcoming: `Entries open in ${duration(Date.parse(drop.startsAt) - now)}`,
    soldout: `Draw: entries close in ${duration(Date.parse(drop.endsAt) - now)}`,
    open: `Draw: entries close in ${duration(Date.parse(drop.endsAt) - now)}`,
  }[current] : {
    ended: 'Ended',
    upcoming: `Starts in ${duration(Date.parse(drop.startsAt) - now)}`,
    soldout: 'Sold out',
    open: 'On sale now',
  }[current];

  // The waiting list: the buyer's place, and how many wait.
  const place = state.positions.get(dropId);
  const waiting = state.waiting.get(dropId) || 0;
  const lineText = place
    ? `You are #${countFormat.format(place)} in line (${countFormat.format(Math.max(waiting, place))} waiting).`
    : waiting > 0 && current === 'soldout' && !draw ? `${countFormat.format(waiting)} waiting for units to come back.` : '';
  const line = $('.line', card);
  line.hidden = !lineText || Boolean(hold);
  if (line.textContent !== lineText) line.textContent = lineText;
  renderDraw(drop, card, draw, current);

  // A hold that ran out stays on screen at 0:00, so the buyer sees why Purchase went away.
  const shown = state.holds.get(dropId);
  const holdLine = $('.hold', card);
  holdLine.hidden = !shown || !['reserved', 'expired'].includes(shown.status);
  if (!holdLine.hidden) {
    holdLine.dataset.status = shown.status;
    $('.hold-label', card).textContent = hold ? 'Held for you:' : 'Your hold ran out:';
    const parts = [shown.variant, shown.quantity > 1 ? `× ${shown.quantity}` : ''].filter(Boolean);
    $('.hold-what', card).textContent = parts.join(' ');
    $('.hold-left', card).textContent = hold ? countdown(hold.expiresAt - now) : '0:00';
  }

  renderSizes(drop, card);
  renderQuantity(drop, card);
  const busy = card.dataset.busy === 'yes';
  const reserveButton = $('.reserve', card);
  // A drawn draw sells what it left first come, first served.
  reserveButton.hidden = Boolean(hold) || Boolean(draw && !draw.drawnAt);
  const picked = (drop.variants || []).find((v) => v.label === choice(dropId).size);
  const sizeMissing = Boolean(drop.variants) && (!picked || picked.availableStock <= 0);
  reserveButton.disabled = busy || current !== 'open' || sizeMissing;
  $('.extend', card).hidden = !hold || (hold.extensions || 0) >= (drop.maxExtensions || 0);
  $('.extend', card).disabled = busy;
  $('.purchase', card).hidden = !hold;
  $('.purchase', card).disabled = busy;
  $('.cancel', card).hidden = !hold;
  $('.cancel', card).disabled = busy;
  // A sold-out race drop takes a waiting list; a draw takes entries while it is open.
  $('.join', card).hidden = Boolean(hold) || Boolean(draw && !draw.drawnAt) || current !== 'soldout' || Boolean(place);
  $('.join', card).disabled = busy;
  $('.leave', card).hidden = Boolean(hold) || !place;
  $('.leave', card).disabled = busy;
  $('.enter', card).hidden = !draw || Boolean(draw.drawnAt) || !['open', 'soldout'].includes(current) || state.entered.has(dropId);
  $('.enter', card).disabled = busy || sizeMissingForDraw(drop);

  const outcome = state.outcomes.get(dropId);
  const outcomeLine = $('.outcome', card);
  if (outcomeLine.textContent !== (outcome ? outcome.text : '')) outcomeLine.textContent = outcome ? outcome.text : '';
  outcomeLine.dataset.tone = outcome ? outcome.tone : '';

  // The list is rebuilt only when it changed: renderDrop runs four times a second while a hold counts down.
  const buyers = $('.buyers', card);
  const key = `${state.buyer ? state.buyer.id : ''} ${drop.purchases.map((p) => p.id).join(' ')}`;
  if (buyers.dataset.key === key) return;
  buyers.dataset.key = key;
  const names = drop.purchases.map((p) => {
    const item = document.createElement('li');
    const who = document.createElement('span');
    who.className = 'buyer-name';
    who.textContent = p.user.username;
    const when = document.createElement('time');
    when.dateTime = p.createdAt;
    when.textContent = timeFormat.format(new Date(p.createdAt));
    item.append(who, ' ', when);
    // Usernames are unique, and all the server shows of other buyers: ids stay with their owners.
    if (state.buyer && p.user.username === state.buyer.username) item.classList.add('mine');
    return item;
  });
  if (names.length === 0) {
    const none = document.createElement('li');
    none.className = 'none';
    none.textContent = 'No buyers yet';
    names.push(none);
  }
  buyers.replaceChildren(...names);
}

// Countdowns (hold, opening) move without any message from the server; once a second is enough, but the
// tick runs more often so the display changes within a quarter second of the true boundary.
function tick() {
  const now = serverNow();
  // The "your turn" banner stays while an offered hold can still be bought.
  const offerLive = [...state.holds.values()].some((h) => h.offered && h.status === 'reserved' && h.expiresAt > now);
  if (!offerLive) $('#turn').hidden = true;
  for (const [dropId, hold] of state.holds) {
    if (hold.status === 'reserved' && hold.expiresAt <= now) {
      hold.status = 'expired';
      say(dropId, 'Your hold ran out, so the unit went back on sale.', 'bad');
    }
  }
  for (const dropId of state.positions.keys()) {
    if (Date.now() - (positionQueue.readAt.get(dropId) || 0) > POSITION_STALE_MS) refreshPosition(dropId);
  }
  for (const [dropId, drop] of state.drops) {
    const draw = state.draws.get(dropId);
    // A closed draw is drawn by the server within moments: look until it is.
    if (drop.mode === 'draw' && !(draw && draw.drawnAt) && Date.parse(drop.endsAt) <= now) loadDraw(dropId, 2000);
    const card = state.cards.get(dropId);
    if (liveHold(dropId) || (card && card.dataset.state !== phase(drop, now)) || phase(drop, now) === 'upcoming') {
      renderDrop(dropId);
    }
  }
}

function say(dropId, text, tone) {
  state.outcomes.set(dropId, { text, tone });
  renderDrop(dropId);
}

// Runs one action on a drop: its buttons stay disabled (and the card says it is busy) until the answer is in,
// so a double press sends one request. Disabling the pressed button, or hiding it when Reserve gives way
// to Purchase, drops keyboard focus to the page: it is put back on `focusAfter`, else Reserve, else the card's heading.
async function act(dropId, focusAfter, work) {
  const card = state.cards.get(dropId);
  if (!card || card.dataset.busy === 'yes') return;
  const hadFocus = card.contains(document.activeElement);
  card.dataset.busy = 'yes';
  card.setAttribute('aria-busy', 'true');
  renderDrop(dropId);
  try {
    await work();
  } finally {
    card.dataset.busy = 'no';
    card.removeAttribute('aria-busy');
    renderDrop(dropId);
    const lost = !document.activeElement || document.activeElement === document.body;
    if (hadFocus && (lost || card.contains(document.activeElement))) {
      const usable = (el) => el && !el.hidden && !el.disabled;
      const target = [$(focusAfter, card), $('.reserve', card)].find(usable) || $('.drop-name', card);
      target.focus();
    }
  }
}

function needBuyer(dropId) {
  if (state.buyer) return false;
  say(dropId, 'Enter your name first (at the top), then reserve.', 'bad');
  $('#username').focus();
  return true;
}

function forgetBuyerIfUnknown(result) {
  if (result.code === 'DS002') {
    // The buyer is gone from the server (a different database): drop it here too.
    writeStore(STORE_KNOWN, knownBuyers().filter((b) => !state.buyer || b.id !== state.buyer.id));
    switchBuyer();
  }
}

// ---- actions -------------------------------------------------------------------------------------------------
function reserve(dropId) {
  if (needBuyer(dropId)) return;
  return act(dropId, '.purchase', async () => {
    const drop = state.drops.get(dropId);
    const body = { userId: state.buyer.id, dropId };
    if (drop && drop.variants) body.variant = choice(dropId).size;
    if (choice(dropId).quantity > 1) body.quantity = choice(dropId).quantity;
    const result = await api('POST', '/api/reservations', body);
    if (!result.ok) {
      say(dropId, describeRefusal(result, state.drops.get(dropId)), 'bad');
      forgetBuyerIfUnknown(result);
      return;
    }
    const hold = result.data;
    if (result.status === 201) {
      // A new hold's createdAt is the database's time during this very request: the best clock reading.
      const createdAt = Date.parse(hold.createdAt);
      narrowOffset(createdAt - result.receivedAt, createdAt - result.sentAt);
    }
    const expiresAt = Date.parse(hold.expiresAt);
    state.holds.set(dropId, {
      id: hold.id, expiresAt, status: hold.status, variant: hold.variant, quantity: hold.quantity || 1, extensions: 0,
    });
    const left = duration(expiresAt - serverNow());
    say(dropId, result.status === 201
      ? `Reserved. It is yours for ${left}: purchase before the countdown ends.`
      : `You already hold one; ${left} left to purchase it.`, 'good');
  });
}

function purchase(dropId) {
  const hold = liveHold(dropId);
  if (!hold || needBuyer(dropId)) return;
  return act(dropId, '.reserve', async () => {
    const result = await api('POST', '/api/purchases', { userId: state.buyer.id, reservationId: hold.id });
    if (!result.ok) {
      if (result.code === 'DS030') hold.status = 'expired';
      if (result.code === 'DS032' || result.code === 'DS003') hold.status = 'cancelled';
      say(dropId, describeRefusal(result, state.drops.get(dropId)), 'bad');
      forgetBuyerIfUnknown(result);
      return;
    }
    hold.status = 'purchased';
    const drop = state.drops.get(dropId);
    // Show the sale at once; the feed brings the same sale (same id) to everyone a moment later.
    if (drop) addPurchase(drop, { id: result.data.id, createdAt: result.data.createdAt, user: { ...state.buyer } });
    say(dropId, `Purchased for ${priceFormat.format(result.data.price)}. It is yours.`, 'good');
  });
}

function cancel(dropId) {
  const hold = liveHold(dropId);
  if (!hold || needBuyer(dropId)) return;
  return act(dropId, '.reserve', async () => {
    const result = await api('POST', `/api/reservations/${encodeURIComponent(hold.id)}/cancel`, { userId: state.buyer.id });
    if (!result.ok) {
      if (result.code === 'DS033') hold.status = 'purchased';
      say(dropId, describeRefusal(result, state.drops.get(dropId)), 'bad');
      return;
    }
    hold.status = result.data.status;
    say(dropId, result.data.status === 'cancelled'
      ? 'Hold cancelled: the unit is back on sale.'
      : 'That hold had already ended; nothing to cancel.', 'good');
  });
}

function extend(dropId) {
  const hold = liveHold(dropId);
  if (!hold || needBuyer(dropId)) return;
  return act(dropId, '.purchase', async () => {
    const result = await api('POST', `/api/reservations/${encodeURIComponent(hold.id)}/extend`, { userId: state.buyer.id });
    if (!result.ok) {
      if (result.code === 'DS030') hold.status = 'expired';
      if (result.code === 'DS034') hold.extensions = Infinity;
      say(dropId, describeRefusal(result, state.drops.get(dropId)), 'bad');
      return;
    }
    hold.expiresAt = Date.parse(result.data.expiresAt);
    hold.extensions += 1;
    say(dropId, `Extended: ${duration(hold.expiresAt - serverNow())} left to purchase it.`, 'good');
  });
}

// ---- fair access: waiting lists, offers, draws ---------------------------------------------------------------
// The sizes a buyer waits for or enters with: the one picked, or (nothing picked on a sized drop, as on a
// sold-out one, whose sizes are all greyed out) any of them.
function wantedSizes(drop) {
  const body = {};
  if (drop && drop.variants) {
    const picked = choice(drop.id).size;
    if (picked) body.variant = picked;
    else body.variants = drop.variants.map((v) => v.label);
  }
  if (choice(drop.id).quantity > 1) body.quantity = choice(drop.id).quantity;
  return body;
}

function sizeMissingForDraw() {
  return false; // no size picked means any size, which a draw takes
}

function joinLine(dropId) {
  if (needBuyer(dropId)) return;
  return act(dropId, '.leave', async () => {
    const drop = state.drops.get(dropId);
    const result = await api('POST', `/api/drops/${encodeURIComponent(dropId)}/waitlist`, { userId: state.buyer.id, ...wantedSizes(drop) });
    if (!result.ok) {
      say(dropId, describeRefusal(result, drop), 'bad');
      forgetBuyerIfUnknown(result);
      return;
    }
    state.positions.set(dropId, result.data.position);
    say(dropId, result.status === 201
      ? `You joined the waiting list at #${result.data.position}. When units come back they are held for you in turn; this page tells you.`
      : `You are already waiting, #${result.data.position} in line.`, 'good');
  });
}

function leaveLine(dropId) {
  if (needBuyer(dropId)) return;
  return act(dropId, '.join', async () => {
    const result = await api('POST', `/api/drops/${encodeURIComponent(dropId)}/waitlist/leave`, { userId: state.buyer.id });
    if (!result.ok) {
      say(dropId, describeRefusal(result, state.drops.get(dropId)), 'bad');
      return;
    }
    state.positions.delete(dropId);
    say(dropId, result.data.left ? 'You left the waiting list.' : 'You were not waiting.', 'good');
  });
}

function enterDraw(dropId) {
  if (needBuyer(dropId)) return;
  return act(dropId, '.drop-name', async () => {
    const drop = state.drops.get(dropId);
    const result = await api('POST', `/api/drops/${encodeURIComponent(dropId)}/draw/entries`, { userId: state.buyer.id, ...wantedSizes(drop) });
    if (!result.ok) {
      say(dropId, describeRefusal(result, drop), 'bad');
      forgetBuyerIfUnknown(result);
      return;
    }
    state.entered.add(dropId);
    const draw = state.draws.get(dropId);
    if (draw && result.status === 201) draw.entries += 1;
    say(dropId, result.status === 201
      ? 'You are in the draw. When entries close the order is drawn; if your turn comes, the unit is held for you.'
      : 'You had already entered this draw.', 'good');
  });
}

// A place in line is re-read when the line's length changes, but never more than once per ~2 s for the
// whole page: a busy drop changes its line every tick, and every page watching it must not ask each time.
const positionQueue = { drops: new Set(), checked: new Set(), readAt: new Map(), timer: null, lastAt: 0 };
const POSITION_EVERY_MS = 2000;
// The feed tells the line's length, not who is in it: one buyer joining behind while another ahead
// leaves, within one publication, moves this buyer up with no change to tell. A place is therefore also
// read again this often while the buyer waits.
const POSITION_STALE_MS = 15000;

function refreshPosition(dropId) {
  if (!state.buyer) return;
  positionQueue.checked.add(dropId);
  positionQueue.drops.add(dropId);
  if (positionQueue.timer) return;
  const wait = Math.max(0, positionQueue.lastAt + POSITION_EVERY_MS - Date.now());
  positionQueue.timer = setTimeout(fetchNextPosition, wait);
}

async function fetchNextPosition() {
  positionQueue.timer = null;
  const [dropId] = positionQueue.drops;
  if (dropId === undefined || !state.buyer) return;
  positionQueue.drops.delete(dropId);
  positionQueue.lastAt = Date.now();
  positionQueue.readAt.set(dropId, positionQueue.lastAt);
  const buyer = state.buyer;
  const result = await api('GET', `/api/drops/${encodeURIComponent(dropId)}/waitlist?userId=${encodeURIComponent(buyer.id)}`);
  if (result.ok && state.buyer === buyer) {
    if (result.data.position) state.positions.set(dropId, result.data.position);
    else state.positions.delete(dropId);
    state.waiting.set(dropId, result.data.waiting);
    renderDrop(dropId);
  }
  if (positionQueue.drops.size > 0) {
    positionQueue.timer = setTimeout(fetchNextPosition, POSITION_EVERY_MS);
  }
}

// The buyer's live holds, offers among them, from the server: after a reload, a resync, or an offer.
let loadingHolds = null;
async function loadHolds() {
  if (!state.buyer) return;
  if (loadingHolds) return loadingHolds;
  const buyer = state.buyer;
  loadingHolds = (async () => {
    const result = await api('GET', `/api/users/${encodeURIComponent(buyer.id)}/reservations`);
    loadingHolds = null;
    if (!result.ok || state.buyer !== buyer) return [];
    for (const hold of result.data) {
      const known = state.holds.get(hold.dropId);
      if (known && known.id === hold.id) continue;
      state.holds.set(hold.dropId, { // an offer, or a hold made before this page loaded
        id: hold.id, expiresAt: Date.parse(hold.expiresAt), status: hold.status, variant: hold.variant,
        quantity: hold.quantity || 1, extensions: 0, offered: hold.offered,
      });
      state.positions.delete(hold.dropId);
      if (!state.drops.has(hold.dropId)) await loadDrop(hold.dropId);
      renderDrop(hold.dropId);
    }
    return result.data;
  })();
  return loadingHolds;
}

// A drop not in the list (a closed draw): fetched alone so its hold can be shown and bought.
async function loadDrop(dropId) {
  const result = await api('GET', `/api/drops/${encodeURIComponent(dropId)}`);
  if (!result.ok || state.drops.has(dropId)) return;
  state.drops.set(dropId, { ...result.data, seq: undefined });
  renderList();
}

// The feed says the buyer's turn came: the hold (its id, to buy it) is read over REST, then shown like any
// hold, with a banner that says so wherever the buyer is on the page.
async function offerArrived(offer) {
  const find = (holds) => (holds || []).find((h) => h.dropId === offer.dropId);
  // A load already under way may have been read before the offer was made: then read once more.
  let hold = find(await loadHolds());
  if (!hold) hold = find(await loadHolds());
  if (!hold) return; // already bought, cancelled or lapsed
  const drop = state.drops.get(offer.dropId);
  const name = drop ? drop.name : hold.dropName;
  const left = countdown(Date.parse(hold.expiresAt) - serverNow());
  const what = [hold.variant, hold.quantity > 1 ? `× ${hold.quantity}` : ''].filter(Boolean).join(' ');
  $('#turn-text').textContent = `“${name}”${what ? ` (${what})` : ''} is held for you for ${left}. Purchase it before the countdown ends.`;
  const link = $('#turn-link');
  link.href = `#drop-${offer.dropId}`;
  link.onclick = (event) => {
    event.preventDefault();
    const card = state.cards.get(offer.dropId);
    if (card) $('.purchase', card).focus();
  };
  $('#turn').hidden = false;
  say(offer.dropId, 'Your turn: units came back and are held for you. Purchase before the countdown ends.', 'good');
}

// How a draw stands: asked once per draw drop shown (and again while a closed draw is being drawn, at
// most every `throttleMs`).
const drawAsked = new Map(); // drop id → when last asked
async function loadDraw(dropId, throttleMs = Infinity) {
  const asked = drawAsked.get(dropId);
  if (asked !== undefined && (asked === 'pending' || Date.now() - asked < throttleMs)) return;
  drawAsked.set(dropId, 'pending');
  const result = await api('GET', `/api/drops/${encodeURIComponent(dropId)}/draw`);
  drawAsked.set(dropId, Date.now());
  if (result.ok) state.draws.set(dropId, result.data);
  else drawAsked.delete(dropId);
  renderDrop(dropId);
}

function renderDraw(drop, card, draw, current) {
  const box = $('.draw', card);
  if (draw && !state.draws.has(drop.id) && !drawAsked.has(drop.id)) loadDraw(drop.id);
  box.hidden = !draw;
  if (!draw) return;
  const mine = state.buyer && draw.order.find((p) => p.username === state.buyer.username);
  const entries = countFormat.format(draw.entries);
  let text;
  if (draw.drawnAt) text = `Drawn among ${entries} ${draw.entries === 1 ? 'entry' : 'entries'}; ${countFormat.format(draw.winners)} got units at once.`;
  else if (current === 'ended') text = `Entries closed with ${entries}; drawing…`;
  else if (current === 'upcoming') text = 'Entries open when the drop starts.';
  else text = state.entered.has(drop.id) ? `You are in the draw (${entries} entered).` : `${entries} entered so far.`;
  const state_ = $('.draw-state', card);
  if (state_.textContent !== text) state_.textContent = text;

  const result = $('.draw-result', card);
  result.hidden = !draw.drawnAt || !mine;
  if (mine) {
    const won = mine.place <= (draw.winners || 0);
    result.dataset.tone = won ? 'good' : '';
    result.textContent = won
      ? `You won: drawn #${mine.place}. Your units are held for you.`
      : `Not this time: drawn #${mine.place}. You are in line in that order if units come back.`;
  }
  const details = $('.draw-details', card);
  details.hidden = !draw.drawnAt;
  if (!draw.drawnAt) return;
  $('.draw-seed', card).textContent = draw.seed;
  const list = $('.draw-order', card);
  const key = `${draw.seed} ${state.buyer ? state.buyer.username : ''}`;
  if (list.dataset.key === key) return;
  list.dataset.key = key;
  list.replaceChildren(...draw.order.map((p) => {
    const item = document.createElement('li');
    item.value = p.place;
    const ticket = document.createElement('code');
    ticket.textContent = p.ticket.slice(0, 12);
    ticket.title = p.ticket;
    item.append(p.username, ' ', ticket);
    if (state.buyer && p.username === state.buyer.username) item.classList.add('mine');
    return item;
  }));
}

async function createDrop(event) {
  event.preventDefault();
  const form = event.target;
  const fields = new FormData(form);
  const outcome = $('#admin-outcome');
  const body = {
    name: fields.get('name').trim(),
    price: Number(fields.get('price')),
    totalStock: Number(fields.get('totalStock')),
  };
  // datetime-local has no zone: it is this device's local time, sent as an absolute instant.
  if (fields.get('startsAt')) body.startsAt = new Date(fields.get('startsAt')).toISOString();
  if (fields.get('holdSeconds')) body.holdSeconds = Number(fields.get('holdSeconds'));
  if (fields.get('perUserLimit')) body.perUserLimit = Number(fields.get('perUserLimit'));
  if (fields.get('endsAt')) body.endsAt = new Date(fields.get('endsAt')).toISOString();
  if (fields.get('mode') === 'draw') body.mode = 'draw';
  const button = $('button[type=submit]', form);
  button.disabled = true;
  const result = await api('POST', '/api/drops', body, fields.get('token'));
  button.disabled = false;
  if (!result.ok) {
    outcome.dataset.tone = 'bad';
    outcome.textContent = result.status === 401 || result.status === 403
      ? `Not allowed: ${result.message}`
      : `Not created: ${describeRefusal(result)}`;
    return;
  }
  outcome.dataset.tone = 'good';
  outcome.textContent = `Created “${result.data.name}” with ${result.data.totalStock} units.`;
  // The token stays filled in for the next drop; the drop's own fields are cleared.
  for (const name of ['name', 'price', 'totalStock', 'startsAt', 'endsAt', 'holdSeconds', 'perUserLimit']) form.elements[name].value = '';
  // The feed announces stock changes, not new drops: fetch the list so the new drop shows here now.
  if (!onlyDrop) reload();
}

// ---- the live feed ---------------------------------------------------------------------------------------------
// One WebSocket; when it drops, reconnect with exponential backoff (0.5 s doubling to 15 s) and jitter, so a
// restarted server is not hit by every page at the same instant. The snapshot sent on every connect
// replaces what the page holds, so nothing missed while disconnected stays missing.
const feed = { attempt: 0, timer: null, ticker: null, socket: null };

function setConnection(kind, text) {
  const line = $('#connection');
  line.dataset.state = kind;
  line.textContent = text;
}

function connect() {
  clearTimeout(feed.timer);
  clearInterval(feed.ticker);
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  const query = onlyDrop ? `?drop=${encodeURIComponent(onlyDrop)}` : '';
  let socket;
  try {
    socket = new WebSocket(`${scheme}://${location.host}/ws${query}`);
  } catch {
    scheduleReconnect();
    return;
  }
  feed.socket = socket;
  // The inbox key goes in a message, not the URL, which proxies log.
  socket.addEventListener('open', () => subscribeInbox());
  socket.addEventListener('message', (event) => {
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return;
    }
    // The server says whether changes are reaching it: a snapshot taken while it is not listening, and
    // `paused`, mean the page may go stale until the `resync` that follows.
    if (message.type === 'snapshot') {
      feed.attempt = 0;
      if (message.live === false) setConnection('reconnecting', 'Connected; live updates paused…');
      else setConnection('live', 'Live');
    } else if (message.type === 'paused') {
      setConnection('reconnecting', 'Connected; live updates paused…');
    } else if (message.type === 'resync') {
      setConnection('live', 'Live');
    }
    onFeedMessage(message);
  });
  socket.addEventListener('close', () => {
    if (feed.socket === socket) scheduleReconnect();
  });
}

// Opens the buyer's inbox on the feed: their offers come to this page, and to no one else's.
function subscribeInbox() {
  const socket = feed.socket;
  if (!socket || socket.readyState !== WebSocket.OPEN || !state.buyer || !state.buyer.inboxKey) return;
  socket.send(JSON.stringify({ type: 'subscribe', inboxKey: state.buyer.inboxKey }));
}

function scheduleReconnect() {
  feed.socket = null;
  const base = Math.min(15000, 500 * 2 ** feed.attempt);
  const delay = Math.round(base / 2 + Math.random() * (base / 2));
  feed.attempt += 1;
  const retryAt = Date.now() + delay;
  const show = () => {
    const left = Math.max(0, Math.ceil((retryAt - Date.now()) / 1000));
    setConnection('reconnecting', left > 0 ? `Reconnecting in ${left} s…` : 'Reconnecting…');
  };
  show();
  feed.ticker = setInterval(show, 1000);
  feed.timer = setTimeout(connect, delay);
}

// ---- start -----------------------------------------------------------------------------------------------------
function start() {
  $('#buyer-form').addEventListener('submit', chooseBuyer);
  $('#buyer-switch').addEventListener('click', switchBuyer);
  $('#admin-form').addEventListener('submit', createDrop);
  $('#drops-scope').hidden = !onlyDrop;

  const saved = readStore(STORE_BUYER, null);
  state.buyer = saved && saved.id && saved.username ? saved : null;
  renderBuyer();
  if (state.buyer) loadHolds();

  // REST first, so the page shows drops even where WebSockets are blocked; the feed's snapshot follows.
  reload();
  connect();
  setInterval(tick, 250);
  // A machine waking from sleep has a dead socket the browser may not notice for a while: reconnect now.
  window.addEventListener('online', () => {
    if (!feed.socket) connect();
  });
}

start();
