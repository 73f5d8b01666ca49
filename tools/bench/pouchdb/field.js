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
//                       (node-fetch's `timeout`); default 60000. See "Timeouts" below.
//   --max_attempts=N    replication attempts in all, both directions together; default 50.
//   --first_backoff_ms=N, --max_backoff_ms=N
//                       sleep between attempts: first_backoff, doubled each time up to
//                       max_backoff, each with +-50% jitter; defaults 100 and 5000, as Hamlet's
//                       field client (client/protocol.h RetryPolicy).
//
// Output: one JSON line on stdout at the end:
//   {"seconds": S, "docs_written": N, "docs_read": N, "attempts": N, "errors": [...], ...}
// seconds: wall time of the replications only (both directions for push, retries and the sleeps
// between them included; the local writes are not timed). docs_written: docs the push wrote to
// the remote; docs_read: docs the phone read from the remote (the pull direction). Both are
// summed over attempts, so a batch sent again after a cut counts again. attempts: replication
// attempts in all. errors: one short message per failed attempt. Also: "completed", "local_docs"
// (doc count of the local database at the end), "requests" (HTTP requests to the remote, each
// its own TCP connection), "unhandled_rejections" (see below) and "phases" (the same per
// direction). Exit status 0 when every replication completed, 1 when one never did (attempts
// ran out or a 4xx answer that retrying cannot fix), 2 for bad usage or input. Progress goes to
// stderr.
//
// What PouchDB 9.0.0 does by default, and this script keeps (a new user's setup):
//   - local store: the LevelDB adapter (leveldown 6, prebuilt binary in the npm package), in DIR;
//   - replicate(): batch_size 100 (the _changes feed is read with limit=100, and revs_diff,
//     _bulk_get and _bulk_docs go 100 docs at a time), batches_limit 10, checkpoints (_local
//     docs) written to both sides after every batch, so a new attempt resumes after the last
//     batch whose checkpoint was written;
//   - HTTP: node-fetch 2 behind fetch-cookie, without an agent, so every request sends
//     "Connection: close" and opens its own TCP connection; it asks for gzip, and pouchdb-server
//     (express-pouchdb's `compression`) compresses its answers; request bodies go uncompressed;
//   - docs are fetched with _bulk_get, but PouchDB probes that once per database URL and process:
//     if the first _bulk_get fails for any reason, a cut link included, it decides the server
//     lacks it and fetches every doc with its own GET (6 at a time) for the rest of the run;
//   - a one-shot replication does not retry by itself (PouchDB's `retry` is for live ones);
//     this script starts it again, as an app would. An attempt that failed can go on writing
//     the batch it was fetching in the background; its docs are counted when the report is made.
//
// Timeouts. PouchDB 7+ dropped the `ajax: {timeout}` option with `request`; 9.0.0 sets no
// timeout on its fetches at all (the http adapter computes a `requestTimeout` and never uses
// it), so a stalled request would hang forever. The remote database is therefore given a
// `fetch` that passes node-fetch's `timeout` on each request: it bounds the wait for the
// answer's headers (upload included) and, again, the reading of its body. The default, 60 s,
// lets a full batch (100 docs of about 1 KB with their revision histories, ~110 KB) cross a
// 100 kbit/s link (12.5 KB/s: about 9 s) with room to spare, and a 30 kbit/s one too; a link
// that drops shows up at once anyway, as the connection is reset. If no request is in flight
// and none has finished for the timeout and 10 s more (a promise PouchDB dropped), the attempt
// is cancelled and counted as failed.
//
// Node ends a process on an unhandled promise rejection; PouchDB leaves some of a replication's
// promises unobserved (replicate() calls src.info() after each batch without a catch), so on a
// flaky link the phone would crash where a browser would log. They are logged and counted.
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
    timeoutMs: number('timeout_ms', 60000, 1),
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

// Resolves as `attempt` does, unless the replication stalls: no request to the remote in flight
// and none finished for the request timeout and 10 s more, which only a promise PouchDB dropped
// can cause (a request that hangs is ended by its own timeout). Then the attempt is cancelled.
function untilDoneOrStalled(attempt, state) {
  const stallMs = state.options.timeoutMs + 10000;
  let timer;
  const watchdog = new Promise((resolve, reject) => {
    timer = setInterval(() => {
      if (state.net.inFlight === 0 && Date.now() - state.net.last > stallMs) {
        attempt.cancel();
        reject(new Error(`stalled: no request to the remote for ${stallMs} ms`));
      }
    }, 1000);
  });
  state.net.last = Date.now();
  return Promise.race([attempt, watchdog]).finally(() => clearInterval(timer));
}

// Runs one-shot replications of src into target until one completes or the attempts run out.
async function replicateUntilDone(PouchDB, name, src, target, state) {
  const phase = { direction: name, attempts: 0, seconds: 0, completed: false };
  const results = [];
  state.phases.push({ phase, results });
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
        result = await untilDoneOrStalled(attempt, state);
      } catch (err) {
        failure = err;
        result = err && err.result;
      }
      if (!failure && result && result.status === 'cancelled') failure = new Error('stalled: cancelled');
      // Kept, not summed now: after an attempt has failed (say its _changes request was cut),
      // the batch it was fetching goes on in the background and may still write docs, and
      // PouchDB counts them in this same object.
      if (result) results.push(result);
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
      log(`${name} attempt ${phase.attempts} failed: ${message}` +
        (result ? ` (this attempt: ${result.docs_read} read, ${result.docs_written} written)` : ' (no result)'));
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
  const net = { inFlight: 0, last: Date.now(), requests: 0 };
  const remote = new PouchDB(options.remote, {
    fetch: async (url, init) => {
      net.inFlight++;
      net.requests++;
      try {
        return await PouchDB.fetch(url, Object.assign({}, init, { timeout: timeoutMs }));
      } finally {
        net.inFlight--;
        net.last = Date.now();
      }
    },
  });
  log(`PouchDB ${PouchDB.version}, local ${local.adapter} in ${options.db}, remote ${remote.adapter}`);

  const state = { options, net, attempts: 0, errors: [], phases: [], unhandled: 0 };
  // See "Node ends a process" above.
  process.on('unhandledRejection', (err) => {
    state.unhandled++;
    log(`unhandled rejection inside PouchDB (ignored, as a browser would): ${shortMessage(err)}`);
  });
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
  let localDocs = null;
  try {
    localDocs = (await local.info()).doc_count;
    await local.close();
  } catch (err) {
    log(`local info: ${err.message}`);
  }
  const phases = state.phases.map(({ phase, results }) => {
    const total = (key) => results.reduce((n, r) => n + (r[key] || 0), 0);
    return Object.assign({}, phase, {
      seconds: Math.round(phase.seconds * 1000) / 1000,
      docs_read: total('docs_read'),
      docs_written: total('docs_written'),
      doc_write_failures: total('doc_write_failures'),
    });
  });
  const sum = (direction, key) => phases.filter((p) => p.direction === direction).reduce((n, p) => n + p[key], 0);
  const report = {
    seconds: Math.round(seconds * 1000) / 1000,
    docs_written: sum('push', 'docs_written'),
    docs_read: sum('pull', 'docs_read'),
    attempts: state.attempts,
    errors: state.errors,
    completed: ok,
    local_docs: localDocs,
    requests: net.requests,
    unhandled_rejections: state.unhandled,
    phases,
  };
  process.stdout.write(JSON.stringify(report) + '\n');
  return ok ? 0 : 1;
}

// Exits at once: requests of attempts that failed may still be pending (until their timeout).
// process.stdout is synchronous for files and pipes, so the report is out by then.
main().then((code) => process.exit(code), (err) => {
  process.stderr.write(`field.js: ${err.stack || err}\n`);
  process.exit(1);
});
