#!/usr/bin/env node
// The phone of the competing system: PouchDB on the device, replicating to pouchdb-server
// (CouchDB's protocol over HTTP/1.1). hamlet-bench --mode=field runs it through the same shaped
// link as Hamlet's device client, so the two can be compared.
//
//   node field.js push --docs=FILE --remote=URL --db=DIR [flags]
//     A phone back from a week offline: a fresh local PouchDB in DIR gets FILE's docs in one
//     bulk write, then each of FILE's edits as a normal update (get, change summary, put: a
//     second revision), then syncs: one-shot replication local -> remote, then remote -> local.
//   node field.js pull --remote=URL --db=DIR [flags]
//     A new phone's first sync: a fresh local PouchDB in DIR, one-shot replication remote -> local.
//
// FILE is JSON: {"docs": [{"_id": ..., ...}], "edits": [{"_id": ..., "summary": "..."}]}.
// Flags:
//   --modules=DIR       where the locked install lives (the pouchdb-server script's INSTALL_DIR,
//                       or its node_modules); default: Node's own lookup (NODE_PATH works too).
//   --timeout_ms=N      per HTTP request, for the answer's headers and again for its body
//                       (node-fetch's `timeout`); default 120000. See "Timeouts" below.
//   --max_attempts=N    replication attempts in all, both directions together; default 50.
//   --first_backoff_ms=N, --max_backoff_ms=N
//                       sleep between attempts: first_backoff, doubled each time up to
//                       max_backoff, each with +-50% jitter; defaults 100 and 5000, as Hamlet's
//                       field client (tools/field/protocol.h RetryPolicy).
//
// Output: one JSON line on stdout at the end:
//   {"seconds": S, "docs_written": N, "docs_read": N, "attempts": N, "errors": [...], ...}
// seconds: wall time of the replications only (both directions for push, retries and the sleeps
// between them included; the local writes are not timed). docs_written: docs the push wrote to
// the remote; docs_read: docs the phone read from the remote (the pull direction). Both are
// summed over attempts, so a batch sent again after a cut counts again. attempts: replication
// attempts in all. errors: one short message per failed attempt. "phases" gives the same per
// direction, "local_docs" the doc count of the local database at the end. Exit status 0 when
// every replication completed, 1 when one never did (attempts ran out or a fatal HTTP error),
// 2 for bad usage or input. Progress goes to stderr.
//
// What PouchDB 9.0.0 does by default, and this script keeps (a new user's setup):
//   - local store: the LevelDB adapter (leveldown 6), in DIR;
//   - replicate(): batch_size 100 changes per batch, batches_limit 10, checkpoints written to
//     both sides after every batch (so a new attempt resumes after the last whole batch);
//   - HTTP: node-fetch 2 behind fetch-cookie, no keep-alive agent, so every request sends
//     "Connection: close" and opens its own TCP connection; _changes read 25 at a time
//     (CHANGES_BATCH_SIZE); docs fetched with _bulk_get (per-doc GETs, 50 at once, if the
//     server lacks it);
//   - a one-shot replication does not retry by itself (PouchDB's `retry` is for live ones);
//     this script starts it again, as an app would.
//
// Timeouts. PouchDB 7+ dropped the `ajax: {timeout}` option with `request`; 9.0.0 sets no
// timeout on its fetches at all (the http adapter computes a `requestTimeout` and never uses
// it), so a stalled request would hang forever. The remote database is therefore given a
// `fetch` that passes node-fetch's `timeout` on each request. The default, 120 s, lets a
// full batch (100 docs of about 1.5 KB each, with their revision histories) cross a
// 100 kbit/s link (12.5 KB/s, so about 15 s) many times over; a dropped link shows up at once
// anyway, as the connection is reset.
'use strict';

const fs = require('fs');
const path = require('path');

const USAGE =
  'usage: node field.js push --docs=FILE --remote=URL --db=DIR [--modules=DIR] [--timeout_ms=N]\n' +
  '                         [--max_attempts=N] [--first_backoff_ms=N] [--max_backoff_ms=N]\n' +
  '       node field.js pull --remote=URL --db=DIR [same flags]';

class UsageError extends Error {}

function parseArgs(argv) {
  const [command, ...rest] = argv;
  if (command !== 'push' && command !== 'pull') throw new UsageError('the command must be push or pull');
  const known = new Set(['docs', 'remote', 'db', 'modules', 'timeout_ms', 'max_attempts', 'first_backoff_ms',
    'max_backoff_ms']);
  const flags = {};
  for (const arg of rest) {
    const m = /^--([a-z_]+)=(.*)$/s.exec(arg);
    if (!m || !known.has(m[1])) throw new UsageError(`unknown argument ${arg}`);
    flags[m[1]] = m[2];
  }
  const number = (name, fallback, min) => {
    if (!(name in flags)) return fallback;
    const n = Number(flags[name]);
    if (!Number.isInteger(n) || n < min) throw new UsageError(`--${name} must be an integer >= ${min}`);
    return n;
  };
  const options = {
    command,
    docs: flags.docs,
    remote: flags.remote,
    db: flags.db,
    modules: flags.modules,
    timeoutMs: number('timeout_ms', 120000, 1),
    maxAttempts: number('max_attempts', 50, 1),
    firstBackoffMs: number('first_backoff_ms', 100, 0),
    maxBackoffMs: number('max_backoff_ms', 5000, 0),
  };
  if (!options.remote) throw new UsageError('--remote=URL is required');
  if (!options.db) throw new UsageError('--db=DIR is required');
  if (command === 'push' && !options.docs) throw new UsageError('push needs --docs=FILE');
  if (command === 'pull' && options.docs) throw new UsageError('pull takes no --docs');
  return options;
}

function loadPouchDB(modules) {
  if (!modules) return require('pouchdb');
  // Accept the install dir or its node_modules.
  const base = path.basename(path.resolve(modules)) === 'node_modules' ? path.dirname(path.resolve(modules))
    : path.resolve(modules);
  return require(require.resolve('pouchdb', { paths: [base] }));
}

function readWork(file) {
  let work;
  try {
    work = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (err) {
    throw new UsageError(`cannot read ${file}: ${err.message}`);
  }
  const docs = work && work.docs;
  const edits = (work && work.edits) || [];
  if (!Array.isArray(docs) || !Array.isArray(edits)) throw new UsageError(`${file}: docs and edits must be arrays`);
  for (const d of docs) {
    if (!d || typeof d._id !== 'string') throw new UsageError(`${file}: every doc needs a string _id`);
  }
  for (const e of edits) {
    if (!e || typeof e._id !== 'string' || typeof e.summary !== 'string') {
      throw new UsageError(`${file}: every edit needs a string _id and a string summary`);
    }
  }
  return { docs, edits };
}

// A fresh local database: DIR must be missing or empty.
function freshDir(dir) {
  if (fs.existsSync(dir)) {
    if (fs.readdirSync(dir).length > 0) throw new UsageError(`--db=${dir} is not empty; give a fresh directory`);
    fs.rmdirSync(dir); // LevelDB makes it itself.
  }
  fs.mkdirSync(path.dirname(path.resolve(dir)), { recursive: true });
}

function log(line) {
  process.stderr.write(`field.js: ${line}\n`);
}

function shortMessage(err) {
  const parts = [];
  if (err && err.status) parts.push(String(err.status));
  if (err && err.name && err.name !== 'Error') parts.push(err.name);
  let message = (err && (err.reason || err.message)) || String(err);
  if (err && err.code && !message.includes(err.code)) message += ` (${err.code})`;
  parts.push(message);
  return parts.join(' ').replace(/\s+/g, ' ').slice(0, 200);
}

// 4xx answers other than these will not go away by trying again.
function retryable(err) {
  const status = err && err.status;
  if (typeof status !== 'number' || status < 400 || status >= 500) return true;
  return status === 408 || status === 409 || status === 429;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Runs one-shot replications of src into target until one completes or the attempts run out.
async function replicateUntilDone(PouchDB, name, src, target, state) {
  const phase = { direction: name, attempts: 0, seconds: 0, docs_read: 0, docs_written: 0, doc_write_failures: 0,
    completed: false };
  state.phases.push(phase);
  const start = process.hrtime.bigint();
  let backoff = state.options.firstBackoffMs;
  try {
    while (state.attempts < state.options.maxAttempts) {
      state.attempts++;
      phase.attempts++;
      const attempt = PouchDB.replicate(src, target);
      attempt.on('change', (info) => {
        log(`${name} attempt ${phase.attempts}: ${info.docs_read} read, ${info.docs_written} written, ` +
          `last_seq ${info.last_seq}`);
      });
      let result;
      let failure;
      try {
        result = await attempt;
      } catch (err) {
        failure = err;
        result = err && err.result;
      }
      if (result) {
        phase.docs_read += result.docs_read || 0;
        phase.docs_written += result.docs_written || 0;
        phase.doc_write_failures += result.doc_write_failures || 0;
      }
      if (!failure && result && result.doc_write_failures > 0) {
        failure = new Error(`${result.doc_write_failures} doc write failures`);
      }
      if (!failure) {
        phase.completed = true;
        log(`${name}: complete after ${phase.attempts} attempt(s)`);
        return true;
      }
      const message = shortMessage(failure);
      state.errors.push(`${name}#${phase.attempts}: ${message}`);
      log(`${name} attempt ${phase.attempts} failed: ${message}`);
      if (!retryable(failure)) {
        log(`${name}: not retryable, giving up`);
        return false;
      }
      if (state.attempts >= state.options.maxAttempts) break;
      await sleep(Math.round(backoff * (0.5 + Math.random())));
      backoff = Math.min(backoff * 2, state.options.maxBackoffMs);
    }
    log(`${name}: gave up after ${state.options.maxAttempts} attempts in all`);
    return false;
  } finally {
    phase.seconds = Number(process.hrtime.bigint() - start) / 1e9;
  }
}

async function writeWeek(local, work) {
  const written = await local.bulkDocs(work.docs);
  const failed = written.filter((r) => r.error);
  if (failed.length > 0) {
    throw new Error(`local bulk write: ${failed.length} failed, first: ${failed[0].id} ${failed[0].message}`);
  }
  for (const edit of work.edits) {
    const doc = await local.get(edit._id);
    doc.summary = edit.summary;
    await local.put(doc);
  }
  log(`local: wrote ${work.docs.length} docs and ${work.edits.length} edits`);
}

async function main() {
  let options;
  let work;
  try {
    options = parseArgs(process.argv.slice(2));
    if (options.command === 'push') work = readWork(options.docs);
    freshDir(options.db);
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    process.stderr.write(`field.js: ${err.message}\n${USAGE}\n`);
    return 2;
  }
  const PouchDB = loadPouchDB(options.modules);
  const timeoutMs = options.timeoutMs;
  const local = new PouchDB(path.resolve(options.db));
  const remote = new PouchDB(options.remote, {
    fetch: (url, init) => PouchDB.fetch(url, Object.assign({}, init, { timeout: timeoutMs })),
  });
  log(`PouchDB ${PouchDB.version}, local ${local.adapter} in ${options.db}, remote ${remote.adapter}`);

  const state = { options, attempts: 0, errors: [], phases: [] };
  let ok;
  let seconds;
  try {
    if (work) await writeWeek(local, work);
    const start = process.hrtime.bigint();
    if (options.command === 'push') {
      ok = await replicateUntilDone(PouchDB, 'push', local, remote, state) &&
        await replicateUntilDone(PouchDB, 'pull', remote, local, state);
    } else {
      ok = await replicateUntilDone(PouchDB, 'pull', remote, local, state);
    }
    seconds = Number(process.hrtime.bigint() - start) / 1e9;
  } catch (err) {
    // Not a replication failure (those are counted above): the local database itself failed.
    process.stderr.write(`field.js: ${err.stack || err}\n`);
    return 1;
  }
  const sum = (direction, key) =>
    state.phases.filter((p) => p.direction === direction).reduce((n, p) => n + p[key], 0);
  let localDocs = null;
  try {
    localDocs = (await local.info()).doc_count;
    await local.close();
  } catch (err) {
    log(`local info: ${err.message}`);
  }
  const report = {
    seconds: Math.round(seconds * 1000) / 1000,
    docs_written: sum('push', 'docs_written'),
    docs_read: sum('pull', 'docs_read'),
    attempts: state.attempts,
    errors: state.errors,
    completed: ok,
    local_docs: localDocs,
    phases: state.phases.map((p) => Object.assign({}, p, { seconds: Math.round(p.seconds * 1000) / 1000 })),
  };
  process.stdout.write(JSON.stringify(report) + '\n');
  return ok ? 0 : 1;
}

main().then((code) => {
  process.exitCode = code;
}, (err) => {
  process.stderr.write(`field.js: ${err.stack || err}\n`);
  process.exitCode = 1;
});
