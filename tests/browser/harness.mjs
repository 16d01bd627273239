// What the Node tests in this folder share: the adapter as a child process on a loopback port, REST calls,
// headless Chromium, numbered steps, and waits with deadlines (nothing sleeps for a fixed time).
//
// Environment: DROPSTOCK_HTTP_BIN (default target/debug/dropstock-http), DATABASE_URL (default the local
// cluster of `make db`), CHROMIUM (default /usr/bin/chromium).

import { spawn } from 'node:child_process';
import http from 'node:http';
import { existsSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const adapterBin = process.env.DROPSTOCK_HTTP_BIN || path.join(repo, 'target', 'debug', 'dropstock-http');
const databaseUrl = process.env.DATABASE_URL || 'postgresql://postgres@127.0.0.1:5544/postgres';
const chromiumBin = process.env.CHROMIUM || '/usr/bin/chromium';

// The flags known to work on these machines (no sandbox as root, no GPU, nothing phoning home), and no
// QUIC, which only ever slows a loopback test down.
const CHROMIUM_FLAGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic',
];

/** A failed step: its message is the whole report, no stack needed. */
export class StepFailure extends Error {}

/** Numbered `ok N - …` lines, and the count for the closing `NAME: N passed, M failed` line. */
export class Steps {
  passed = 0;

  ok(text, started) {
    this.passed += 1;
    const ms = started === undefined ? '' : ` (${Date.now() - started} ms)`;
    console.log(`ok ${this.passed} - ${text}${ms}`);
  }
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** Resolves with `what()`'s first truthy value, polled every 10 ms; fails the step after `timeout` ms. */
export async function until(what, timeout, description) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await what();
    if (value) return value;
    if (Date.now() > deadline) throw new StepFailure(`${description}: not within ${timeout} ms`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** Whether `/healthz` answers 200, asked on a connection of its own that is closed after the answer, so
 * that no idle keep-alive connection is left holding a place under the adapter's connection cap. */
export function healthy(base) {
  return new Promise((resolve) => {
    const request = http.get(`${base}/healthz`, { agent: false, headers: { Connection: 'close' } }, (response) => {
      response.resume();
      response.on('end', () => resolve(response.statusCode === 200));
    });
    request.on('error', () => resolve(false));
  });
}

/** dropstock-http as a child process, with settings given as its environment variables. */
export class AdapterProcess {
  log = '';
  child = null;

  constructor(env = {}) {
    this.env = env;
    // The adapter must not outlive the test, however it ends.
    process.on('exit', () => this.stop());
  }

  running() {
    return this.child !== null && this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Starts it on `port` and waits until `/healthz` answers; resolves with its base URL. */
  async start(port) {
    if (!existsSync(adapterBin)) {
      throw new StepFailure(`adapter binary not found at ${adapterBin}: build it with 'cargo build -p dropstock-http' or set DROPSTOCK_HTTP_BIN`);
    }
    const listen = `127.0.0.1:${port}`;
    const child = spawn(adapterBin, ['--listen', listen], {
      env: { ...process.env, DATABASE_URL: databaseUrl, RUST_LOG: process.env.RUST_LOG || 'info', ...this.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.child = child;
    const collect = (chunk) => { this.log += chunk; };
    child.stdout.setEncoding('utf8').on('data', collect);
    child.stderr.setEncoding('utf8').on('data', collect);
    this.exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
    const base = `http://${listen}`;
    const deadline = Date.now() + 20_000;
    while (Date.now() < deadline) {
      const gone = await Promise.race([this.exited, new Promise((resolve) => setTimeout(resolve, 100, null))]);
      if (gone) throw new StepFailure(`dropstock-http exited (code ${gone.code}, signal ${gone.signal}) before serving:\n${this.log}`);
      if (await healthy(base)) return base;
    }
    throw new StepFailure(`dropstock-http did not answer /healthz on ${listen} within 20 s:\n${this.log}`);
  }

  /** SIGTERM without waiting: for exit handlers. */
  stop() {
    if (this.running()) this.child.kill('SIGTERM');
  }

  /** SIGTERM lets the adapter close its clients and database connections; SIGKILL if it takes too long.
   * Resolves with how it exited. */
  async stopAndWait(patience = 5_000) {
    if (!this.running()) return this.exited;
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), patience);
    const exit = await this.exited;
    clearTimeout(timer);
    return exit;
  }
}

/** One REST call; resolves with `{status, body}` whatever the status. */
export async function call(base, method, urlPath, body, token) {
  const headers = { 'Content-Type': 'application/json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(`${base}${urlPath}`, { method, headers, body: body && JSON.stringify(body) });
  return { status: response.status, body: await response.json() };
}

/** One REST call that must succeed; resolves with its `data`. */
export async function rest(base, method, urlPath, body, token) {
  const { status, body: json } = await call(base, method, urlPath, body, token);
  if (!json.success) throw new StepFailure(`${method} ${urlPath} answered ${status}: ${json.message}`);
  return json.data;
}

export async function launchBrowser() {
  let chromium;
  try {
    ({ chromium } = await import('playwright-core'));
  } catch (error) {
    throw new StepFailure(`playwright-core is not installed (run 'npm ci --prefix tests/browser'): ${error.message}`);
  }
  if (!existsSync(chromiumBin)) {
    throw new StepFailure(`no browser at ${chromiumBin}: install Debian's package with 'apt-get install -y chromium'`);
  }
  try {
    return await chromium.launch({ executablePath: chromiumBin, args: CHROMIUM_FLAGS, timeout: 30_000 });
  } catch (error) {
    throw new StepFailure(`Chromium at ${chromiumBin} did not start: ${error.message}`);
  }
}

/** Runs `scenario` under a watchdog, prints `NAME: N passed, M failed` and exits with the outcome;
 * `cleanup` runs however it ended. */
export async function runTest(name, steps, watchdogMs, scenario, cleanup) {
  const watchdog = setTimeout(() => {
    console.log(`FAILED: the ${name} test did not finish within ${watchdogMs / 1000} s`);
    process.exit(1);
  }, watchdogMs);
  for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => process.exit(1));
  let failed = false;
  try {
    await scenario();
  } catch (error) {
    failed = true;
    console.log(`FAILED after ${steps.passed} steps: ${error instanceof StepFailure ? error.message : error.stack}`);
  } finally {
    await cleanup(failed);
    clearTimeout(watchdog);
  }
  console.log(`${name}: ${steps.passed} passed, ${failed ? 1 : 0} failed`);
  process.exit(failed ? 1 : 0);
}
