// The replaced Node/Express backend's web client against dropstock-http, in Node with the real
// socket.io-client: the client's REST calls as it makes them, and its live updates over /socket.io/
// (long-polling only, WebSocket only, and polling upgraded to WebSocket as the client does by default).
//
// Starts dropstock-http on a free loopback port (open drop creation on, an admin token, one allowed
// origin). Every wait has a deadline. Exits non-zero with the failing step's name.

import http from 'node:http';
import { randomBytes, randomUUID } from 'node:crypto';
import { io } from 'socket.io-client';
import { AdapterProcess, StepFailure, Steps, call, freePort, rest, runTest, until } from './harness.mjs';

const adminToken = `compat-${randomBytes(8).toString('hex')}`;
const allowedOrigin = 'http://shop.example';
const tag = randomBytes(4).toString('hex');
// What the replaced client promises its users: another buyer's change shows within a second.
const LIVE_MS = 1_000;

const steps = new Steps();
const adapter = new AdapterProcess({
  DROPSTOCK_ADMIN_TOKEN: adminToken,
  DROPSTOCK_OPEN_DROP_CREATION: 'true',
  DROPSTOCK_CORS_ORIGINS: allowedOrigin,
});
const sockets = [];

// "DD-MM-YYYY, hh:mm A", as the client's Create Drop page sends startsAt; the adapter reads it as UTC.
function clientDate(date) {
  const two = (n) => String(n).padStart(2, '0');
  const hours = date.getUTCHours();
  return `${two(date.getUTCDate())}-${two(date.getUTCMonth() + 1)}-${date.getUTCFullYear()}, `
    + `${two(hours % 12 || 12)}:${two(date.getUTCMinutes())} ${hours < 12 ? 'AM' : 'PM'}`;
}

// A Socket.IO client as the replaced client makes one (`io(BASE)`), recording what it is sent.
function connect(base, name, options) {
  const socket = io(base, { reconnection: false, ...options });
  socket.seen = [];
  socket.onAny((event, ...args) => socket.seen.push({ event, args, at: Date.now() }));
  sockets.push(socket);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new StepFailure(`${name} did not connect within 5 s`)), 5_000);
    socket.once('connect', () => { clearTimeout(timer); resolve(socket); });
    socket.once('connect_error', (error) => { clearTimeout(timer); reject(new StepFailure(`${name} could not connect: ${error.message}`)); });
  });
}

// The first `event` a socket was sent at or after `since` (and, if given, matching `test`).
function arrival(socket, event, since, test = () => true) {
  return socket.seen.find((seen) => seen.event === event && seen.at >= since && test(seen.args));
}

async function expectLive(clients, since, what, extra) {
  for (const [name, socket] of clients) {
    const update = await until(() => arrival(socket, 'stock:update', since), Math.max(1, since + LIVE_MS - Date.now()),
      `${name} gets stock:update within ${LIVE_MS} ms of ${what}`);
    if (update.at - since > LIVE_MS) throw new StepFailure(`${name} got stock:update ${update.at - since} ms after ${what}`);
    if (update.args.length !== 0) throw new StepFailure(`${name}'s stock:update carried a payload: ${JSON.stringify(update.args)}`);
    if (extra) await extra(name, socket);
  }
  return Math.max(...clients.map(([, socket]) => arrival(socket, 'stock:update', since).at - since));
}

// A raw HTTP request with its own headers, for what socket.io-client does not let a test set.
function rawRequest(base, urlPath, headers, method = 'GET', body = undefined, keepAlive = true) {
  return new Promise((resolve, reject) => {
    const request = http.request(`${base}${urlPath}`, { method, headers, ...(keepAlive ? {} : { agent: false }) });
    request.on('response', (response) => {
      let body = '';
      response.setEncoding('utf8').on('data', (chunk) => { body += chunk; });
      response.on('end', () => resolve({ status: response.statusCode, headers: response.headers, body }));
    });
    request.on('upgrade', (response, socket) => {
      socket.destroy();
      resolve({ status: response.statusCode, headers: response.headers, body: '' });
    });
    request.on('error', reject);
    request.end(body);
  });
}

async function scenario() {
  let started = Date.now();
  const base = await adapter.start(await freePort());
  if (!/WARN.*DROP CREATION IS OPEN/.test(adapter.log)) throw new StepFailure(`no start-up warning about open drop creation:\n${adapter.log}`);
  steps.ok(`dropstock-http serves ${base}, warning that drop creation is open`, started);

  // The operator registers the client's fixed buyer id: admin only, and an id in use is refused.
  started = Date.now();
  const buyerId = randomUUID();
  const refusedWithoutToken = await call(base, 'POST', '/api/users', { username: `fixed-${tag}`, id: buyerId });
  if (refusedWithoutToken.status !== 401) throw new StepFailure(`a buyer with a given id and no token: ${refusedWithoutToken.status}, not 401`);
  const buyer = await rest(base, 'POST', '/api/users', { username: `fixed-${tag}`, id: buyerId }, adminToken);
  if (buyer.id !== buyerId) throw new StepFailure(`the buyer was created as ${buyer.id}, not ${buyerId}`);
  const taken = await call(base, 'POST', '/api/users', { username: `other-${tag}`, id: buyerId }, adminToken);
  if (taken.status !== 409 || taken.body.code !== 'DS041') throw new StepFailure(`an id in use: ${taken.status} ${taken.body.code}, not 409 DS041`);
  steps.ok(`the operator created the client's buyer ${buyerId}; without the token 401, the id again 409 DS041`, started);

  // The client's Create Drop page: no token, its own date format.
  started = Date.now();
  const opens = new Date(Date.now() - 120_000);
  const startsAt = clientDate(opens);
  const drop = await rest(base, 'POST', '/api/drops', { name: `Compat ${tag}`, price: 99.5, totalStock: 5, startsAt });
  opens.setUTCSeconds(0, 0);
  if (Date.parse(drop.startsAt) !== opens.getTime()) throw new StepFailure(`startsAt "${startsAt}" was read as ${drop.startsAt}, not ${opens.toISOString()}`);
  steps.ok(`POST /api/drops without a token, startsAt "${startsAt}" read as ${drop.startsAt} (UTC)`, started);

  // The client's list: data is the list; each drop has what it reads.
  started = Date.now();
  const listed = (await rest(base, 'GET', '/api/drops')).find((d) => d.id === drop.id);
  if (!listed || listed.name !== drop.name || listed.price !== 99.5 || listed.availableStock !== 5 || !Array.isArray(listed.purchases)) {
    throw new StepFailure(`GET /api/drops does not list the drop as the client reads it: ${JSON.stringify(listed)}`);
  }
  steps.ok('GET /api/drops lists it with id, name, price, availableStock and purchases', started);

  started = Date.now();
  const polling = await connect(base, 'the polling client', { transports: ['polling'] });
  const websocket = await connect(base, 'the WebSocket client', { transports: ['websocket'] });
  const upgrading = await connect(base, 'the default client', {});
  await until(() => upgrading.io.engine.transport.name === 'websocket', 5_000, 'the default client upgrades to WebSocket');
  const clients = [['polling', polling], ['websocket', websocket], ['upgraded', upgrading]];
  for (const [name, socket] of clients) {
    const transport = socket.io.engine.transport.name;
    if (transport !== (name === 'polling' ? 'polling' : 'websocket')) throw new StepFailure(`the ${name} client runs over ${transport}`);
  }
  steps.ok('three clients connected: polling only, WebSocket only, and polling upgraded to WebSocket', started);

  // A reservation made elsewhere (not by these clients).
  started = Date.now();
  const hold = await rest(base, 'POST', '/api/reservations', { userId: buyer.id, dropId: drop.id });
  if (!hold.id) throw new StepFailure('the reservation has no id');
  let slowest = await expectLive(clients, started, 'a reservation', async (name, socket) => {
    await until(() => arrival(socket, 'stock', started, ([m]) => m.dropId === drop.id && m.availableStock === 4 && m.totalStock === 5
      && m.type === 'stock' && Number.isInteger(m.seq)), LIVE_MS, `${name} gets stock with availableStock 4`);
  });
  steps.ok(`a reservation elsewhere: every client got stock:update (no payload) and stock (availableStock 4), slowest after ${slowest} ms`);

  started = Date.now();
  const sale = await call(base, 'POST', '/api/purchases', { userId: buyer.id, reservationId: hold.id });
  if (sale.status !== 200 || sale.body.message !== 'Purchased successfully') throw new StepFailure(`purchase: ${sale.status} ${sale.body.message}`);
  slowest = await expectLive(clients, started, 'a purchase', async (name, socket) => {
    await until(() => arrival(socket, 'purchase', started, ([m]) => m.dropId === drop.id && m.id && m.user?.username === buyer.username
      && m.createdAt), LIVE_MS, `${name} gets purchase naming ${buyer.username}`);
  });
  const relisted = (await rest(base, 'GET', '/api/drops')).find((d) => d.id === drop.id);
  if (!relisted.purchases.some((p) => p.id && p.user?.username === buyer.username)) throw new StepFailure('the refetched list does not show the purchase');
  steps.ok(`a purchase elsewhere ("Purchased successfully"): every client got stock:update and purchase, slowest after ${slowest} ms; the refetch lists the buyer`, started);

  // Disconnecting mid-poll: the real client closing while its poll is pending, then a raw Engine.IO
  // session whose pending poll is cut off (the TCP connection dropped).
  started = Date.now();
  const leaver = await connect(base, 'the leaving client', { transports: ['polling'] });
  leaver.close();
  const handshake = await rawRequest(base, '/socket.io/?EIO=4&transport=polling', {});
  const sid = JSON.parse(handshake.body.slice(1)).sid;
  const query = `/socket.io/?EIO=4&transport=polling&sid=${sid}`;
  const joined = await rawRequest(base, query, { 'Content-Type': 'text/plain;charset=UTF-8' }, 'POST', '40');
  if (joined.body !== 'ok') throw new StepFailure(`joining the namespace over raw polling: ${joined.status} ${joined.body}`);
  const welcome = await rawRequest(base, query, {});
  // Engine.IO v4 separates the packets of one poll with the record separator.
  if (!welcome.body.split('\x1e').some((packet) => packet.startsWith('40{'))) {
    throw new StepFailure(`no namespace connect answer: ${JSON.stringify(welcome.body)}`);
  }
  const pending = http.get(`${base}${query}`);
  let answered = false;
  pending.on('response', () => { answered = true; });
  pending.on('error', () => {});
  // A request through the same server after the poll was sent: by its answer the poll has been read.
  await rest(base, 'GET', '/api/drops');
  if (answered) throw new StepFailure('the poll was answered with nothing to send');
  pending.destroy();
  const other = await rest(base, 'POST', '/api/users', { username: `second-${tag}` });
  const reserved = Date.now();
  await rest(base, 'POST', '/api/reservations', { userId: other.id, dropId: drop.id });
  await expectLive(clients, reserved, 'a reservation after clients left mid-poll');
  // The session whose poll was cut off lost nothing: its next poll has the update.
  const resumed = await rawRequest(base, query, {});
  if (!resumed.body.includes('"stock:update"')) throw new StepFailure(`the next poll of the cut-off session: ${resumed.status} ${resumed.body}`);
  const health = await call(base, 'GET', '/healthz');
  if (health.status !== 200 || !adapter.running()) throw new StepFailure(`the adapter after clients left mid-poll: ${health.status}`);
  steps.ok(`clients that left mid-poll: the adapter serves on, the others got the next stock:update, the cut-off session's next poll has it`, started);

  // Malformed Engine.IO requests are refused with a 4xx, never a 5xx, and change nothing.
  started = Date.now();
  const malformed = [
    ['GET', '/socket.io/', undefined],
    ['GET', '/socket.io/?EIO=3&transport=polling', undefined],
    ['GET', '/socket.io/?EIO=4&transport=carrier', undefined],
    ['GET', '/socket.io/?EIO=4&transport=polling&sid=nope', undefined],
    ['GET', '/socket.io/?EIO=4&transport=websocket', undefined],
    ['POST', '/socket.io/?EIO=4&transport=polling&sid=nope', 'zzz'],
    ['POST', `/socket.io/?EIO=4&transport=polling&sid=${JSON.parse((await rawRequest(base, '/socket.io/?EIO=4&transport=polling', {})).body.slice(1)).sid}`, 'zzz'],
    ['PUT', '/socket.io/', undefined],
  ];
  for (const [method, target, body] of malformed) {
    const answer = await rawRequest(base, target, {}, method, body);
    if (answer.status < 400 || answer.status >= 500) throw new StepFailure(`${method} ${target}: ${answer.status} ${answer.body}`);
  }
  if ((await call(base, 'GET', '/healthz')).status !== 200) throw new StepFailure('the adapter is unhealthy after malformed requests');
  steps.ok(`${malformed.length} malformed Engine.IO requests (no transport, protocol 3, unknown session, garbage packets, PUT) each got a 4xx`, started);

  // The CORS allow-list: a listed origin may poll (and read the answer), another may neither poll nor
  // open a WebSocket.
  started = Date.now();
  const listedPoll = await rawRequest(base, '/socket.io/?EIO=4&transport=polling', { Origin: allowedOrigin });
  if (listedPoll.status !== 200 || listedPoll.headers['access-control-allow-origin'] !== allowedOrigin) {
    throw new StepFailure(`a poll from ${allowedOrigin}: ${listedPoll.status}, allow-origin ${listedPoll.headers['access-control-allow-origin']}`);
  }
  const foreignPoll = await rawRequest(base, '/socket.io/?EIO=4&transport=polling', { Origin: 'http://evil.example' });
  const foreignSocket = await rawRequest(base, '/socket.io/?EIO=4&transport=websocket', {
    Origin: 'http://evil.example', Connection: 'Upgrade', Upgrade: 'websocket',
    'Sec-WebSocket-Version': '13', 'Sec-WebSocket-Key': randomBytes(16).toString('base64'),
  });
  if (foreignPoll.status !== 403 || foreignSocket.status !== 403) {
    throw new StepFailure(`another origin: poll ${foreignPoll.status}, WebSocket ${foreignSocket.status}, not 403 and 403`);
  }
  steps.ok(`the allow-list: ${allowedOrigin} polls and may read it; http://evil.example gets 403 for polling and WebSocket`, started);

  // The connection cap: each Socket.IO client holds a place under it while connected (here a second
  // adapter with room for 3 connections: 3 WebSocket clients fill it), and gives it back on leaving.
  started = Date.now();
  const capped = new AdapterProcess({ DROPSTOCK_MAX_CONNECTIONS: '3' });
  capped.base = await capped.start(await freePort());
  // The start-up probe's own connection gives its place back a moment after it closes: until it has, a
  // client may find the cap full, so each one is let in once there is room (a refused one is closed).
  const fill = [];
  for (let k = 0; k < 3; k += 1) {
    fill.push(await until(async () => {
      try {
        return await connect(capped.base, `capped client ${k + 1}`, { transports: ['websocket'] });
      } catch {
        return false;
      }
    }, 2_000, `capped client ${k + 1} connects while there is room under the cap`));
  }
  const drops = () => rawRequest(capped.base, '/api/drops', { Connection: 'close' }, 'GET', undefined, false);
  const full = await until(async () => { const answer = await drops(); return answer.status === 503 && answer; }, 2_000,
    'a request past the cap of 3 held by Socket.IO clients answers 503');
  if (!full.body.includes('connection limit')) throw new StepFailure(`past the cap: ${full.body}`);
  fill[0].close();
  await until(async () => (await drops()).status === 200, 2_000, 'a request is served again once a Socket.IO client left');
  for (const socket of fill.slice(1)) socket.close();
  await capped.stopAndWait();
  steps.ok('3 Socket.IO clients fill a cap of 3 connections (the next request gets 503); one leaves and requests are served again', started);

  // Shutdown: the drain closes every client and the adapter exits cleanly.
  started = Date.now();
  const gone = new Set();
  for (const [name, socket] of clients) socket.once('disconnect', () => gone.add(name));
  const exit = await adapter.stopAndWait(10_000);
  if (exit.code !== 0) throw new StepFailure(`the adapter exited with ${exit.code ?? exit.signal} on SIGTERM:\n${adapter.log}`);
  await until(() => gone.size === clients.length, 1_000, 'every client told it was disconnected');
  if (!/shut down cleanly/.test(adapter.log)) throw new StepFailure(`the drain did not finish cleanly:\n${adapter.log}`);
  steps.ok('SIGTERM: every Socket.IO client was disconnected and the adapter shut down cleanly', started);
}

await runTest('socketio', steps, 60_000, scenario, async (failed) => {
  for (const socket of sockets) socket.close();
  await adapter.stopAndWait();
  if (failed) console.log(`adapter log:\n${adapter.log}`);
});
