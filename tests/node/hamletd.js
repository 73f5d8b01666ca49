// The hamletd lifecycle shared by the node tests: start a hamletd of its own on
// free loopback ports (device and admin listeners) in a fresh temp dir, wait
// until it is ready, read the admin token; stop it with SIGTERM; and make sure no
// hamletd outlives the test script.
//
// The server binary is $HAMLETD (default /work/main/build/server/hamletd).

'use strict';

const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const HAMLETD = process.env.HAMLETD || '/work/main/build/server/hamletd';

const READY_TIMEOUT_MS = 20_000;
const STOP_TIMEOUT_MS = 15_000; // hamletd's default --shutdown_grace is 10 s.

// Every server started here and not yet stopped, for guard(): a server counts
// from the moment it is spawned, also while startServer still waits for it.
const live = new Set();

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// Starts hamletd in a fresh temp dir named `${prefix}…` and waits until it is
// ready. Resolves with the server:
//   { child, dir, address, adminAddress, adminToken, stderr: string[], exit() }
// address and adminAddress are the device and admin listeners ("127.0.0.1:port");
// exit() is null while the process runs, then { code, signal } or { error }.
// If the server does not become ready, it is stopped and its dir removed before
// the returned promise rejects.
async function startServer({ prefix }) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  const readyFile = path.join(dir, 'ready');
  const dataDir = path.join(dir, 'data');
  const child = spawn(
    HAMLETD,
    ['--listen=127.0.0.1:0', '--admin_listen=127.0.0.1:0', '--metrics_listen=127.0.0.1:0', `--data_dir=${dataDir}`, `--ready_file=${readyFile}`],
    { stdio: ['ignore', 'ignore', 'pipe'] }, // stdout repeats the admin token: not wanted in test logs.
  );
  const stderr = [];
  child.stderr.on('data', (chunk) => stderr.push(chunk.toString()));
  let exited = null;
  child.on('exit', (code, signal) => (exited = { code, signal }));
  child.on('error', (err) => (exited = { error: err }));
  const server = { child, dir, address: null, adminAddress: null, adminToken: null, stderr, exit: () => exited };
  live.add(server);

  try {
    await waitReady(server, readyFile, dataDir);
  } catch (err) {
    await stopServer(server);
    throw err;
  }
  return server;
}

async function waitReady(server, readyFile, dataDir) {
  // Once the server accepts calls the ready file holds three lines: the device
  // address, the admin address and the metrics address. hamletd writes it whole
  // and renames it into place; only three complete lines count all the same.
  const deadline = Date.now() + READY_TIMEOUT_MS;
  while (Date.now() < deadline) {
    if (server.exit()) {
      throw new Error(`hamletd exited before it was ready: ${JSON.stringify(server.exit())}\n${server.stderr.join('')}`);
    }
    let text = '';
    try {
      text = fs.readFileSync(readyFile, 'utf8');
    } catch {
      // Not written yet.
    }
    const ready = /^(127\.0\.0\.1:\d+)\n(127\.0\.0\.1:\d+)\n127\.0\.0\.1:\d+\n$/.exec(text);
    if (ready) {
      [, server.address, server.adminAddress] = ready;
      // On first start hamletd enrols an admin device and writes its token to
      // <data_dir>/admin.token, one line, before it writes the ready file.
      const tokenText = fs.readFileSync(path.join(dataDir, 'admin.token'), 'utf8');
      assert.match(tokenText, /^hmt_[A-Za-z0-9_-]+\n$/, 'admin.token must hold one token line');
      server.adminToken = tokenText.trim();
      return;
    }
    await sleep(50);
  }
  throw new Error(`hamletd wrote no ready file within ${READY_TIMEOUT_MS} ms\n${server.stderr.join('')}`);
}

// Sends SIGTERM and waits for the process to end (SIGKILL as a last resort),
// then removes the server's dir. Returns how it ended; null if `server` is null.
async function stopServer(server) {
  if (!server) return null;
  const { child, dir } = server;
  if (server.exit() === null) {
    child.kill('SIGTERM');
    const deadline = Date.now() + STOP_TIMEOUT_MS;
    while (server.exit() === null && Date.now() < deadline) await sleep(50);
    if (server.exit() === null) child.kill('SIGKILL');
  }
  live.delete(server);
  const result = server.exit();
  fs.rmSync(dir, { recursive: true, force: true });
  return result;
}

function killLive() {
  for (const server of live) {
    if (server.exit() === null) server.child.kill('SIGTERM');
  }
}

// Call once per test script, `name` being the script's file name for messages.
function guard(name, limitMs) {
  // If the test runner dies for any reason, do not leave hamletd behind.
  process.on('exit', killLive);

  // Bounds the whole script: whatever hangs, stop the server and fail.
  const watchdog = setTimeout(() => {
    process.stderr.write(`${name}: still running after ${limitMs} ms; giving up\n`);
    killLive();
    process.exit(1);
  }, limitMs);
  watchdog.unref();
}

module.exports = { startServer, stopServer, guard, sleep };
