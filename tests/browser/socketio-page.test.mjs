// A page written the way the replaced Node/Express backend's web client is, in headless Chromium: served
// from an origin of its own (as the client's dev server serves it), it lists drops over REST, reserves and
// purchases for a fixed buyer id, and reloads the list on every Socket.IO `stock:update` from `io(BASE)`.
// Two browsers: A reserves and purchases, B's list changes without a reload.
//
// Starts dropstock-http (with the page's origin on its CORS allow-list) and the page's own server on free
// loopback ports. Every wait has a deadline.

import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { randomBytes, randomUUID } from 'node:crypto';
import path from 'node:path';
import { AdapterProcess, StepFailure, Steps, freePort, launchBrowser, repo, rest, runTest } from './harness.mjs';

const adminToken = `page-${randomBytes(8).toString('hex')}`;
const tag = randomBytes(4).toString('hex');
const STOCK = 3;
const LIVE_MS = 1_000;
const clientBundle = readFileSync(path.join(repo, 'tests', 'browser', 'node_modules', 'socket.io-client', 'dist', 'socket.io.min.js'));

// The page: what the replaced client does, without React. BASE and the buyer id come from the query.
const PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><title>Drops</title><script src="/socket.io.min.js"></script></head>
<body>
<p id="status">connecting</p>
<ul id="drops"></ul>
<p id="message"></p>
<script>
const params = new URLSearchParams(location.search);
const BASE = params.get('base');
const USER_ID = params.get('user');
let reservationId = null;
async function api(method, path, body) {
  const response = await fetch(BASE + '/api' + path, {
    method, headers: body ? { 'Content-Type': 'application/json' } : {}, body: body && JSON.stringify(body),
  });
  const json = await response.json();
  if (!response.ok) throw new Error(json.message);
  return json;
}
async function refetch() {
  const { data } = await api('GET', '/drops');
  document.getElementById('drops').replaceChildren(...data.map((drop) => {
    const li = document.createElement('li');
    li.dataset.dropId = drop.id;
    li.innerHTML = '<span class="name"></span> <span class="available"></span> '
      + '<button class="reserve">Reserve</button> <button class="purchase">Purchase</button> <span class="buyers"></span>';
    li.querySelector('.name').textContent = drop.name;
    li.querySelector('.available').textContent = String(drop.availableStock);
    li.querySelector('.buyers').textContent = drop.purchases.map((p) => p.user.username).join(',');
    li.querySelector('.reserve').onclick = async () => {
      const { data: hold } = await api('POST', '/reservations', { userId: USER_ID, dropId: drop.id });
      reservationId = hold.id;
      document.getElementById('message').textContent = 'Reserved';
    };
    li.querySelector('.purchase').onclick = async () => {
      const { message } = await api('POST', '/purchases', { userId: USER_ID, reservationId });
      document.getElementById('message').textContent = message;
    };
    return li;
  }));
}
const socket = io(BASE);
socket.on('connect', () => { document.getElementById('status').textContent = 'connected'; });
socket.on('stock:update', () => refetch());
window.transport = () => socket.io.engine && socket.io.engine.transport.name;
refetch();
</script>
</body></html>`;

const steps = new Steps();
let pageServer = null;
const adapter = new AdapterProcess({ DROPSTOCK_ADMIN_TOKEN: adminToken });
let browser = null;

function servePage(port) {
  pageServer = createServer((request, response) => {
    const url = new URL(request.url, 'http://page');
    if (url.pathname === '/socket.io.min.js') {
      response.writeHead(200, { 'Content-Type': 'text/javascript' }).end(clientBundle);
    } else if (url.pathname === '/') {
      response.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' }).end(PAGE);
    } else {
      response.writeHead(404).end();
    }
  });
  return new Promise((resolve) => pageServer.listen(port, '127.0.0.1', () => resolve(`http://127.0.0.1:${port}`)));
}

async function open(name, url) {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.errors = [];
  page.on('pageerror', (error) => page.errors.push(error.message));
  await page.goto(url);
  await page.evaluate(() => { window.noReloadMarker = true; });
  try {
    await page.waitForFunction(() => document.getElementById('status').textContent === 'connected', undefined, { timeout: 5_000 });
  } catch {
    throw new StepFailure(`${name}'s page did not connect to /socket.io/ within 5 s (errors: ${page.errors.join(' | ')})`);
  }
  return page;
}

async function waitIn(page, what, fn, arg, timeout) {
  try {
    await page.waitForFunction(fn, arg, { timeout: Math.max(1, timeout), polling: 10 });
  } catch {
    throw new StepFailure(`${what}: not within ${timeout} ms`);
  }
}

const availableIs = ([id, want]) => document.querySelector(`li[data-drop-id="${id}"] .available`)?.textContent === String(want);

async function scenario() {
  let started = Date.now();
  browser = await launchBrowser();
  const pageBase = await servePage(await freePort());
  adapter.env.DROPSTOCK_CORS_ORIGINS = pageBase;
  const base = await adapter.start(await freePort());
  steps.ok(`Chromium ${browser.version()}, the page at ${pageBase}, dropstock-http at ${base} allowing it`, started);

  started = Date.now();
  const buyerA = await rest(base, 'POST', '/api/users', { username: `page-a-${tag}`, id: randomUUID() }, adminToken);
  const buyerB = await rest(base, 'POST', '/api/users', { username: `page-b-${tag}`, id: randomUUID() }, adminToken);
  const drop = await rest(base, 'POST', '/api/drops', { name: `Page ${tag}`, price: 50, totalStock: STOCK }, adminToken);
  const a = await open('A', `${pageBase}/?base=${encodeURIComponent(base)}&user=${buyerA.id}`);
  const b = await open('B', `${pageBase}/?base=${encodeURIComponent(base)}&user=${buyerB.id}`);
  for (const [who, page] of [['A', a], ['B', b]]) {
    await waitIn(page, `${who} lists the drop with ${STOCK} available`, availableIs, [drop.id, STOCK], 5_000);
    await waitIn(page, `${who}'s socket upgrades to WebSocket`, () => window.transport() === 'websocket', undefined, 5_000);
  }
  steps.ok('both pages list the drop and are connected over WebSocket (upgraded from polling)', started);

  started = Date.now();
  await a.locator(`li[data-drop-id="${drop.id}"] .reserve`).click();
  await waitIn(b, `B shows ${STOCK - 1} available`, availableIs, [drop.id, STOCK - 1], LIVE_MS - (Date.now() - started));
  steps.ok(`A reserved; B's page showed ${STOCK - 1} available ${Date.now() - started} ms after A's click`);

  started = Date.now();
  await waitIn(a, 'A is told "Reserved"', () => document.getElementById('message').textContent === 'Reserved', undefined, 1_000);
  await a.locator(`li[data-drop-id="${drop.id}"] .purchase`).click();
  await waitIn(a, 'A is told "Purchased successfully"', () => document.getElementById('message').textContent === 'Purchased successfully', undefined, 3_000);
  await waitIn(b, `B lists ${buyerA.username} as a buyer`, ([id, name]) => document.querySelector(`li[data-drop-id="${id}"] .buyers`)?.textContent.split(',').includes(name),
    [drop.id, buyerA.username], LIVE_MS);
  steps.ok(`A purchased; B's page lists ${buyerA.username}`, started);

  started = Date.now();
  for (const [who, page] of [['A', a], ['B', b]]) {
    if (!(await page.evaluate(() => window.noReloadMarker === true))) throw new StepFailure(`${who}'s page reloaded`);
    if (page.errors.length) throw new StepFailure(`${who}'s page logged errors: ${page.errors.join(' | ')}`);
  }
  steps.ok('no reloads, no page errors', started);
}

await runTest('socketio-page', steps, 60_000, scenario, async (failed) => {
  if (browser) await browser.close().catch(() => {});
  await adapter.stopAndWait();
  pageServer?.close();
  if (failed) console.log(`adapter log:\n${adapter.log}`);
});
