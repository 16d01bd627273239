// The drop page in a real browser: two buyers, each in their own browser context, watch one drop.
//
// Starts dropstock-http on a free loopback port, creates a drop over REST, and drives Debian's Chromium
// through playwright-core (the adapter, REST and the browser come from harness.mjs). Every wait has a
// deadline; nothing sleeps for a fixed time. Screenshots go to target/browser/. Exits non-zero with the
// failing step's name when anything goes wrong, including when the browser cannot start: a browser test
// that skips itself would hide a broken page.

import { randomBytes } from 'node:crypto';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { AdapterProcess, StepFailure, Steps, freePort, launchBrowser, repo, rest, runTest } from './harness.mjs';

const shots = path.join(repo, 'target', 'browser');
const adminToken = `browser-${randomBytes(8).toString('hex')}`;
const tag = randomBytes(4).toString('hex');

// Short holds keep the "left alone" part quick; long enough for buyer A to purchase in between.
const HOLD_SECONDS = 5;
const STOCK = 5;
// The whole run; a wedged browser or adapter fails the test instead of hanging CI.
const WATCHDOG_MS = 120_000;

const steps = new Steps();
const step = (text, started) => steps.ok(text, started);
const adapter = new AdapterProcess({ DROPSTOCK_ADMIN_TOKEN: adminToken });
let browser = null;
const pages = {};

// ---- the browser -----------------------------------------------------------------------------------------
async function openBuyer(name, base, query, viewport, clockAheadMs = 0) {
  const context = await browser.newContext({ viewport });
  if (clockAheadMs) {
    // A device whose clock is wrong: countdowns must still follow the server's clock.
    await context.addInitScript((ahead) => {
      const realNow = Date.now;
      Date.now = () => realNow() + ahead;
    }, clockAheadMs);
  }
  const page = await context.newPage();
  page.errors = [];
  page.on('pageerror', (error) => page.errors.push(error.message));
  page.on('console', (message) => {
    // Refusals the test provokes (409 limit reached) are logged by Chromium as failed loads; they are
    // expected answers, not page errors.
    if (message.type() === 'error' && !message.text().startsWith('Failed to load resource')) page.errors.push(message.text());
  });
  await page.goto(`${base}/${query}`);
  // A marker that a reload would wipe: the page must stay live without ever reloading.
  await page.evaluate(() => { window.noReloadMarker = true; });
  pages[name] = page;
  return page;
}

// Text of one element of the drop's card, for polling in the page.
function cardText(page, dropId, selector) {
  return page.locator(`li.drop[data-drop-id="${dropId}"] ${selector}`);
}

async function waitFor(page, what, fn, arg, timeout) {
  try {
    await page.waitForFunction(fn, arg, { timeout, polling: 25 });
  } catch (error) {
    throw new StepFailure(`${what}: not within ${timeout} ms (${error.message.split('\n')[0]})`);
  }
}

function waitForStock(page, dropId, expected, timeout, who) {
  return waitFor(page, `${who} sees ${expected} available`, ([id, want]) => {
    const cell = document.querySelector(`li.drop[data-drop-id="${id}"] .available`);
    return cell && cell.textContent === String(want);
  }, [dropId, expected], timeout);
}

function waitForBuyer(page, dropId, username, timeout, who) {
  return waitFor(page, `${who} lists ${username} among the latest buyers`, ([id, name]) => {
    const names = [...document.querySelectorAll(`li.drop[data-drop-id="${id}"] .buyers .buyer-name`)];
    return names.some((n) => n.textContent === name);
  }, [dropId, username], timeout);
}

function waitForOutcome(page, dropId, pattern, timeout, who) {
  return waitFor(page, `${who} is told /${pattern}/`, ([id, source]) => {
    const line = document.querySelector(`li.drop[data-drop-id="${id}"] .outcome`);
    return line && new RegExp(source, 'i').test(line.textContent);
  }, [dropId, pattern], timeout);
}

async function pickName(page, username) {
  await page.getByLabel('Your name').fill(username);
  await page.getByRole('button', { name: 'Continue' }).click();
  await waitFor(page, `the page takes ${username} as the buyer`, (name) => {
    const current = document.querySelector('#buyer-name');
    return current && current.textContent === name && !document.querySelector('#buyer-current').hidden;
  }, username, 5_000);
}

async function saveScreenshots(suffix = '') {
  mkdirSync(shots, { recursive: true });
  for (const [name, page] of Object.entries(pages)) {
    await page.screenshot({ path: path.join(shots, `${name}${suffix}.png`), fullPage: true }).catch(() => {});
  }
}

// ---- the scenario ----------------------------------------------------------------------------------------
async function scenario() {
  // Screenshots of an earlier run must not pass for this one's.
  rmSync(shots, { recursive: true, force: true });
  mkdirSync(shots, { recursive: true });
  // The browser first: when it cannot start, nothing else is worth starting.
  let started = Date.now();
  browser = await launchBrowser();
  step(`Chromium ${browser.version()} started`, started);

  started = Date.now();
  const base = await adapter.start(await freePort());
  step(`dropstock-http serves ${base}`, started);

  started = Date.now();
  const drop = await rest(base, 'POST', '/api/drops', {
    // Pages find the drop by id, so its name need not be unique; a plain one reads better in the README.
    name: 'Court Classic “Night”', price: 129.99, totalStock: STOCK, holdSeconds: HOLD_SECONDS,
  }, adminToken);
  const ann = `ann-${tag}`;
  const ben = `ben-${tag}`;
  step(`created drop ${drop.id} (${STOCK} units, ${HOLD_SECONDS} s holds)`, started);

  // A sees every drop, as `make run` shows them; B follows one drop through its filtered feed, at phone
  // width, on a device whose clock runs three minutes fast.
  started = Date.now();
  const a = await openBuyer('user-a', base, '', { width: 1100, height: 820 });
  const b = await openBuyer('user-b', base, `?drop=${drop.id}`, { width: 390, height: 844 }, 180_000);
  for (const [who, page] of [['A', a], ['B', b]]) {
    await waitFor(page, `${who}'s page goes live`, () => document.querySelector('#connection').dataset.state === 'live', undefined, 10_000);
    await waitForStock(page, drop.id, STOCK, 5_000, who);
  }
  step('both pages are live and show the drop with all its stock', started);

  started = Date.now();
  await pickName(a, ann);
  await pickName(b, ben);
  step(`A buys as ${ann}, B as ${ben} (both registered from the page)`, started);

  // A reserves: B's page must show the lower stock within a second of A's click, without a reload.
  started = Date.now();
  await cardText(a, drop.id, 'button.reserve').click();
  await waitForStock(b, drop.id, STOCK - 1, Math.max(1, 1_000 - (Date.now() - started)), 'B');
  const bSawIt = Date.now() - started;
  await waitFor(a, 'A sees the hold countdown', (id) => {
    const hold = document.querySelector(`li.drop[data-drop-id="${id}"] .hold`);
    return hold && !hold.hidden && /^0:0[1-5]$/.test(hold.querySelector('.hold-left').textContent);
  }, drop.id, 2_000);
  step(`A reserved; B's page showed ${STOCK - 1} available ${bSawIt} ms after A's click`);

  started = Date.now();
  await cardText(a, drop.id, 'button.purchase').click();
  await waitForOutcome(a, drop.id, 'Purchased', 3_000, 'A');
  await waitForBuyer(a, drop.id, ann, 2_000, 'A');
  await waitForBuyer(b, drop.id, ann, 2_000, 'B');
  step(`A purchased; both pages list ${ann} among the latest buyers`, started);

  // The limit is one per buyer: a second Reserve is refused, in words.
  started = Date.now();
  await cardText(a, drop.id, 'button.reserve').click();
  await waitForOutcome(a, drop.id, 'Limit reached', 3_000, 'A');
  step('A reserving again is told "Limit reached"', started);

  // B reserves with the keyboard and leaves the hold alone. Every value its countdown shows is recorded,
  // so the test can tell that it counted down to 0:00 rather than jumped there.
  started = Date.now();
  await b.evaluate((id) => {
    window.countdownSeen = [];
    const card = document.querySelector(`li.drop[data-drop-id="${id}"]`);
    const record = () => {
      const text = card.querySelector('.hold-left').textContent;
      if (!card.querySelector('.hold').hidden && text && window.countdownSeen.at(-1) !== text) window.countdownSeen.push(text);
    };
    new MutationObserver(record).observe(card, { subtree: true, childList: true, characterData: true, attributes: true });
  }, drop.id);
  await cardText(b, drop.id, 'button.reserve').focus();
  await b.keyboard.press('Enter');
  await waitFor(b, 'focus moves to Purchase once B holds a unit', (id) => document.activeElement
    === document.querySelector(`li.drop[data-drop-id="${id}"] button.purchase`), drop.id, 3_000);
  await waitForStock(a, drop.id, STOCK - 2, 1_000, 'A');
  await waitForStock(b, drop.id, STOCK - 2, 1_000, 'B');
  step(`B reserved with the keyboard; both pages show ${STOCK - 2} available`, started);

  mkdirSync(shots, { recursive: true });
  await b.setViewportSize({ width: 900, height: 760 });
  await b.screenshot({ path: path.join(shots, 'drop-page.png') });
  await b.setViewportSize({ width: 390, height: 844 });

  started = Date.now();
  await waitFor(b, "B's countdown reaches 0:00", (id) => {
    const hold = document.querySelector(`li.drop[data-drop-id="${id}"] .hold`);
    return hold && !hold.hidden && hold.dataset.status === 'expired' && hold.querySelector('.hold-left').textContent === '0:00';
  }, drop.id, (HOLD_SECONDS + 3) * 1_000);
  const seen = await b.evaluate(() => window.countdownSeen);
  if (seen.at(-1) !== '0:00' || seen.length < HOLD_SECONDS - 1) {
    throw new StepFailure(`B's countdown did not count down to 0:00: it showed ${seen.join(', ')}`);
  }
  await waitForOutcome(b, drop.id, 'ran out', 1_000, 'B');
  step(`B's hold counted down ${seen.join(' ')}`, started);

  // The worker sweeps due holds every 100 ms; the deadline leaves room for a busy database.
  started = Date.now();
  await waitForStock(a, drop.id, STOCK - 1, 5_000, 'A');
  await waitForStock(b, drop.id, STOCK - 1, 5_000, 'B');
  await waitFor(b, 'B can reserve again', (id) => {
    const button = document.querySelector(`li.drop[data-drop-id="${id}"] button.reserve`);
    return button && !button.hidden && !button.disabled;
  }, drop.id, 1_000);
  step(`the expired hold's unit came back: both pages show ${STOCK - 1} available`, started);

  // The adapter restarts: both pages say so, reconnect by themselves, and the feed works again (B reserves
  // and cancels; A sees both within a second).
  started = Date.now();
  await adapter.stopAndWait();
  for (const [who, page] of [['A', a], ['B', b]]) {
    await waitFor(page, `${who}'s page says it is reconnecting`, () => document.querySelector('#connection').dataset.state === 'reconnecting'
      && /^Reconnecting/.test(document.querySelector('#connection').textContent), undefined, 5_000);
  }
  await adapter.start(Number(new URL(base).port));
  for (const [who, page] of [['A', a], ['B', b]]) {
    await waitFor(page, `${who}'s page is live again`, () => document.querySelector('#connection').dataset.state === 'live', undefined, 10_000);
  }
  step('the adapter restarted; both pages showed "Reconnecting" and went live again by themselves', started);

  started = Date.now();
  await cardText(b, drop.id, 'button.reserve').click();
  await waitForStock(a, drop.id, STOCK - 2, 1_000, 'A');
  await cardText(b, drop.id, 'button.cancel').click();
  await waitForOutcome(b, drop.id, 'Hold cancelled', 3_000, 'B');
  await waitForStock(a, drop.id, STOCK - 1, 1_000, 'A');
  step('after reconnecting, B reserved and cancelled and A saw the stock go down and back up', started);

  // The admin panel: a wrong token is refused in words, the right one creates a drop that opens in an
  // hour, which A's list shows at once with its "starts in" countdown and no way to reserve yet.
  started = Date.now();
  const later = `Runner “Dawn” ${tag}`;
  await a.getByText('Admin: create a drop').click();
  await a.getByLabel('Admin token').fill('not-the-token');
  await a.getByLabel('Name', { exact: true }).fill(later);
  await a.getByLabel('Price', { exact: true }).fill('89.50');
  await a.getByLabel('Units', { exact: true }).fill('20');
  const opens = new Date(Date.now() + 3_600_000);
  const two = (n) => String(n).padStart(2, '0');
  await a.getByLabel('Opens at').fill(`${opens.getFullYear()}-${two(opens.getMonth() + 1)}-${two(opens.getDate())}T${two(opens.getHours())}:${two(opens.getMinutes())}`);
  await a.getByRole('button', { name: 'Create drop' }).click();
  await waitFor(a, 'a wrong admin token is refused', () => /^Not allowed/.test(document.querySelector('#admin-outcome').textContent), undefined, 3_000);
  await a.getByLabel('Admin token').fill(adminToken);
  await a.getByRole('button', { name: 'Create drop' }).click();
  await waitFor(a, 'the admin panel creates the drop', () => /^Created/.test(document.querySelector('#admin-outcome').textContent), undefined, 3_000);
  await waitFor(a, `A's list shows ${later} as starting in about an hour`, (name) => {
    const card = [...document.querySelectorAll('li.drop')].find((li) => li.querySelector('.drop-name').textContent === name);
    return card && /^Starts in (59 m|1 h 00 m)/.test(card.querySelector('.badge').textContent)
      && card.querySelector('button.reserve').disabled;
  }, later, 3_000);
  step('the admin panel refuses a wrong token and creates a drop that shows "Starts in 59 m …"', started);

  // A drop A's page has never listed sells its only unit elsewhere: the feed's first word about it makes
  // the page fetch the list, and the card arrives sold out, with Reserve disabled.
  started = Date.now();
  const lastPair = `Last pair ${tag}`;
  const single = await rest(base, 'POST', '/api/drops', { name: lastPair, price: 240, totalStock: 1 }, adminToken);
  const cy = await rest(base, 'POST', '/api/users', { username: `cy-${tag}` });
  const hold = await rest(base, 'POST', '/api/reservations', { userId: cy.id, dropId: single.id });
  await rest(base, 'POST', '/api/purchases', { userId: cy.id, reservationId: hold.id });
  await waitFor(a, `A's list shows ${lastPair} sold out`, (id) => {
    const card = document.querySelector(`li.drop[data-drop-id="${id}"]`);
    return card && card.dataset.state === 'soldout' && card.querySelector('.badge').textContent === 'Sold out'
      && card.querySelector('button.reserve').disabled;
  }, single.id, 3_000);
  await waitForBuyer(a, single.id, `cy-${tag}`, 1_000, 'A');
  step('a drop sold elsewhere appears on A\'s page by itself, marked "Sold out"', started);

  // A drop sold by size. C follows it on a phone; A takes the last "US 9", and C's picker greys that size
  // out live, with no reload. C then holds two of "US 8" and extends the hold once, as the drop allows.
  started = Date.now();
  const sized = await rest(base, 'POST', '/api/drops', {
    name: `High-top ${tag}`, price: 150, variants: { 'US 8': 2, 'US 9': 1 }, perUserLimit: 2, maxExtensions: 1,
  }, adminToken);
  if (sized.totalStock !== 3 || sized.variants.map((v) => v.label).join() !== 'US 8,US 9') {
    throw new StepFailure(`the sized drop came back as ${JSON.stringify(sized)}`);
  }
  const c = await openBuyer('user-c', base, `?drop=${sized.id}`, { width: 390, height: 844 });
  await waitFor(c, "C's page goes live", () => document.querySelector('#connection').dataset.state === 'live', undefined, 10_000);
  await pickName(c, `cat-${tag}`);
  const sizeRadio = (page, label) => cardText(page, sized.id, `.sizes input[value="${label}"]`);
  for (const [who, page] of [['A', a], ['C', c]]) {
    await waitFor(page, `${who} sees both sizes on sale`, (id) => {
      const radios = [...document.querySelectorAll(`li.drop[data-drop-id="${id}"] .sizes input`)];
      return radios.length === 2 && radios.every((r) => !r.disabled);
    }, sized.id, 5_000);
  }
  step('a sized drop shows its size picker on both pages, every size on sale', started);

  started = Date.now();
  await sizeRadio(a, 'US 9').check();
  await cardText(a, sized.id, 'button.reserve').click();
  const clicked = Date.now();
  await waitForOutcome(a, sized.id, '^Reserved', 3_000, 'A');
  await waitFor(a, 'A\'s hold names its size', (id) =>
    document.querySelector(`li.drop[data-drop-id="${id}"] .hold-what`).textContent === 'US 9', sized.id, 1_000);
  await waitFor(c, 'C\'s picker greys "US 9" out', (id) => {
    const card = document.querySelector(`li.drop[data-drop-id="${id}"]`);
    const nine = card.querySelector('.sizes input[value="US 9"]');
    const eight = card.querySelector('.sizes input[value="US 8"]');
    return nine.disabled && nine.closest('label').classList.contains('soldout') && !eight.disabled;
  }, sized.id, 3_000);
  step(`A took the last "US 9"; C's picker greyed it out ${Date.now() - clicked} ms after A's click`, started);

  started = Date.now();
  await sizeRadio(c, 'US 8').check();
  await cardText(c, sized.id, 'select.quantity').selectOption('2');
  await cardText(c, sized.id, 'button.reserve').click();
  await waitForOutcome(c, sized.id, '^Reserved', 3_000, 'C');
  await waitFor(c, 'C\'s hold shows size and quantity', (id) =>
    document.querySelector(`li.drop[data-drop-id="${id}"] .hold-what`).textContent === 'US 8 × 2', sized.id, 1_000);
  await cardText(c, sized.id, 'button.extend').click();
  await waitForOutcome(c, sized.id, '^Extended', 3_000, 'C');
  await waitFor(c, 'the extend button goes once used up', (id) =>
    document.querySelector(`li.drop[data-drop-id="${id}"] button.extend`).hidden, sized.id, 1_000);
  await waitFor(a, 'A\'s picker greys "US 8" out too', (id) =>
    document.querySelector(`li.drop[data-drop-id="${id}"] .sizes input[value="US 8"]`).disabled, sized.id, 3_000);
  step('C held 2 of "US 8", extended the hold once; A\'s picker greyed "US 8" out', started);

  // The waiting list. Eve holds the only unit of a drop; Fay waits first, then D joins from the page, at
  // #2. Fay leaves and D's place moves to #1 by itself. Eve cancels: the unit is offered to D, whose page
  // shows "Your turn!" and the hold with its countdown, and D buys it.
  started = Date.now();
  const waited = await rest(base, 'POST', '/api/drops', { name: `Waited-for ${tag}`, price: 99, totalStock: 1, holdSeconds: 30 }, adminToken);
  const eve = await rest(base, 'POST', '/api/users', { username: `eve-${tag}` });
  const fay = await rest(base, 'POST', '/api/users', { username: `fay-${tag}` });
  const eveHold = await rest(base, 'POST', '/api/reservations', { userId: eve.id, dropId: waited.id });
  await rest(base, 'POST', `/api/drops/${waited.id}/waitlist`, { userId: fay.id });
  const d = await openBuyer('user-d', base, `?drop=${waited.id}`, { width: 390, height: 844 });
  await waitFor(d, "D's page goes live", () => document.querySelector('#connection').dataset.state === 'live', undefined, 10_000);
  await pickName(d, `dee-${tag}`);
  await waitFor(d, 'D is offered the waiting list', (id) => {
    const join = document.querySelector(`li.drop[data-drop-id="${id}"] button.join`);
    return join && !join.hidden && !join.disabled;
  }, waited.id, 3_000);
  await cardText(d, waited.id, 'button.join').click();
  await waitForOutcome(d, waited.id, 'joined the waiting list at #2', 3_000, 'D');
  await waitFor(d, 'D sees their place, #2', (id) =>
    /^You are #2 in line/.test(document.querySelector(`li.drop[data-drop-id="${id}"] .line`).textContent), waited.id, 1_000);
  // The feed tells the line's length (not who is in it): Fay leaves once the page has heard that two
  // wait, or her leaving and D's joining could fall into one publication and tell nothing.
  await waitFor(d, 'D\'s page hears that two wait', (id) => state.waiting.get(id) === 2, waited.id, 3_000);
  step('D joined a sold-out drop\'s waiting list from the page, second in line', started);

  started = Date.now();
  await rest(base, 'POST', `/api/drops/${waited.id}/waitlist/leave`, { userId: fay.id });
  // The worker publishes the line's new length within a tick; the page re-reads its place at most every 2 s.
  await waitFor(d, "D's place moves to #1", (id) =>
    /^You are #1 in line/.test(document.querySelector(`li.drop[data-drop-id="${id}"] .line`).textContent), waited.id, 5_000);
  step(`the buyer ahead left; D's page showed #1 ${Date.now() - started} ms later`, started);

  started = Date.now();
  await rest(base, 'POST', `/api/reservations/${eveHold.id}/cancel`, { userId: eve.id });
  await waitFor(d, 'D sees "Your turn!" and the offered hold counting down', (id) => {
    const card = document.querySelector(`li.drop[data-drop-id="${id}"]`);
    const hold = card.querySelector('.hold');
    return !document.querySelector('#turn').hidden && !hold.hidden && /^0:(2|3)\d$/.test(hold.querySelector('.hold-left').textContent)
      && !card.querySelector('button.purchase').hidden;
  }, waited.id, 5_000);
  const offeredIn = Date.now() - started;
  await d.screenshot({ path: path.join(shots, 'your-turn.png') });
  await cardText(d, waited.id, 'button.purchase').click();
  await waitForOutcome(d, waited.id, 'Purchased', 3_000, 'D');
  await waitFor(d, 'the banner goes once the offer is bought', () => document.querySelector('#turn').hidden, undefined, 2_000);
  step(`Eve cancelled; D's page said "Your turn!" ${offeredIn} ms later and D bought the offer`, started);

  started = Date.now();
  for (const [who, page] of [['A', a], ['B', b], ['C', c], ['D', d]]) {
    if (!(await page.evaluate(() => window.noReloadMarker === true))) throw new StepFailure(`${who}'s page reloaded`);
    if (page.errors.length) throw new StepFailure(`${who}'s page logged errors: ${page.errors.join(' | ')}`);
  }
  const overflow = await b.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  if (overflow > 0) throw new StepFailure(`B's page is ${overflow} px wider than a 390 px phone screen`);
  await cardText(a, drop.id, '.drop-name').scrollIntoViewIfNeeded();
  await a.screenshot({ path: path.join(shots, 'user-a.png') });
  await b.screenshot({ path: path.join(shots, 'user-b.png'), fullPage: true });
  step(`no reloads, no page errors, fits a phone; screenshots in ${path.relative(repo, shots)}/`, started);
}

// ---- run -------------------------------------------------------------------------------------------------
await runTest('browser', steps, WATCHDOG_MS, scenario, async (failed) => {
  if (failed) {
    await saveScreenshots('-failed');
    if (Object.keys(pages).length) console.log(`screenshots of the failure in ${shots}/`);
  }
  if (browser) await browser.close().catch(() => {});
  await adapter.stopAndWait();
  mkdirSync(shots, { recursive: true });
  writeFileSync(path.join(shots, 'adapter.log'), adapter.log);
  if (failed) console.log(`adapter log: ${path.join(shots, 'adapter.log')}`);
});
