#!/usr/bin/env bash
# Drives tools/hamlet-admin against a real hamletd through `buf curl` and checks
# what the server answers: stats, enrolment, the device list, revocation, the
# audit log, conflicts, backups, bundles carried to and from a phone
# (hamlet-field), replication on a server without an upstream, refusals,
# --help, usage errors and --dry-run.
#
# Run: bash tests/tools/hamlet_admin_test.sh
# The server binary is $HAMLETD (default /work/main/build/server/hamletd), the
# phone's $HAMLET_FIELD (default /work/main/build/tools/hamlet-field). The
# script starts its own hamletd on free loopback ports in a fresh temp dir and
# stops it with SIGTERM when done, also when a check fails or the script is
# interrupted; the whole run is bounded to SCRIPT_LIMIT seconds. grpcurl is
# never called: a stand-in named grpcurl, first on PATH, fails loudly if it is.
# The last line reads "N passed, M failed"; the exit status is 0 only if no
# check failed.

# Predicates and traps are called indirectly, which shellcheck cannot follow.
# shellcheck disable=SC2317
set -uo pipefail

readonly HAMLETD=${HAMLETD:-/work/main/build/server/hamletd}
readonly HAMLET_FIELD=${HAMLET_FIELD:-/work/main/build/tools/hamlet-field}
ROOT=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../.." && pwd)
readonly ROOT
readonly ADMIN=$ROOT/tools/hamlet-admin
readonly SCRIPT_LIMIT=60 # seconds, the whole script
readonly READY_LIMIT=20  # seconds for hamletd to write its ready file
readonly STOP_LIMIT=15   # seconds for hamletd to exit on SIGTERM (--shutdown_grace is 10 s)
readonly CALL_LIMIT=15   # seconds for one hamlet-admin run
readonly SEEDED_UNITS=289 # AdminUnit records hamletd seeds on first start.
readonly TOWN_CODE=206    # hamletd's default --town_code.
readonly UNIT=07132       # a commune of town 206.

# The environment must not pick the server or token for us.
unset HAMLET_ADMIN_SERVER HAMLET_ADMIN_TOKEN_FILE

dir=$(mktemp -d "${TMPDIR:-/tmp}/hamlet-admin-test.XXXXXX")
server_pid=""
server_status=""
watchdog_pid=""

# Sends SIGTERM to hamletd, waits for it to exit (SIGKILL as a last resort) and
# sets server_status to its exit status.
stop_server() {
  [[ -n $server_pid ]] || return 0
  kill -TERM "$server_pid" 2>/dev/null
  local deadline=$((SECONDS + STOP_LIMIT))
  while kill -0 "$server_pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
  kill -0 "$server_pid" 2>/dev/null && kill -KILL "$server_pid" 2>/dev/null
  wait "$server_pid"
  server_status=$?
  server_pid=""
}

cleanup() {
  stop_server
  [[ -z $watchdog_pid ]] || kill -TERM "$watchdog_pid" 2>/dev/null
  rm -rf "$dir"
}
trap cleanup EXIT
trap 'echo "hamlet_admin_test: interrupted" >&2; exit 1' INT
trap 'echo "hamlet_admin_test: still running after ${SCRIPT_LIMIT} s; giving up" >&2; exit 1' TERM

# Whatever hangs, the script ends: the watchdog sends it SIGTERM, whose trap
# exits and so stops the server. The watchdog's own sleep dies with it.
(
  trap 'kill "$sleeper" 2>/dev/null; exit 0' TERM
  sleep "$SCRIPT_LIMIT" &
  sleeper=$!
  wait "$sleeper" && kill -TERM $$
) >/dev/null 2>&1 &
watchdog_pid=$!

# --- Reporting, TAP-like: "ok 3 - name" or "not ok 3 - name" with details.
passed=0
failed=0

# Tokens stay out of the log.
redact() {
  sed -E 's/hmt_[A-Za-z0-9_-]+/hmt_…/g'
}

# Prints the last hamlet-admin run, indented, for a failed check.
show_run() {
  {
    echo "command: hamlet-admin ${last_args[*]-}"
    echo "exit status: ${rc-}"
    echo "stdout:"
    printf '%s\n' "${out-}" | head -40
    echo "stderr:"
    printf '%s\n' "${err-}" | head -20
  } | redact | sed 's/^/#   /'
}

# check NAME COMMAND...: one check, passed if COMMAND succeeds.
check() {
  local name=$1
  shift
  if "$@"; then
    passed=$((passed + 1))
    echo "ok $((passed + failed)) - $name"
  else
    failed=$((failed + 1))
    echo "not ok $((passed + failed)) - $name"
    show_run
  fi
}

finish() {
  echo "$passed passed, $failed failed"
  exit $((failed == 0 ? 0 : 1))
}

# --- Running the tool. admin runs it against our server through buf with the
# admin token file; admin_raw adds nothing. Both set rc, out and err.
admin_raw() {
  last_args=("$@")
  timeout "$CALL_LIMIT" "$ADMIN" "$@" >"$dir/out" 2>"$dir/err"
  rc=$?
  out=$(<"$dir/out")
  err=$(<"$dir/err")
}

admin() {
  admin_raw --client=buf --server="$admin_address" --token-file="$token_file" "$@"
}

# Predicates on the last run.
rc_is() { [[ $rc == "$1" ]]; }
out_has() { grep -qF -- "$1" <<<"$out"; }
out_matches() { grep -qE -- "$1" <<<"$out"; }
err_has() { grep -qF -- "$1" <<<"$err"; }
not() { ! "$@"; }
out_is() { [[ $out == "$1" ]]; }
# The call failed (the server refused it) and stderr says why.
refused_with() { [[ $rc != 0 ]] && err_has "$1"; }
# Exit status 2, with the message on stderr.
usage_error() { [[ $rc == 2 ]] && err_has "$1"; }
equal() { [[ $1 == "$2" ]]; }
contains() { grep -qF -- "$2" <<<"$1"; }
not_empty() { [[ -n $1 ]]; }

# Prints the value of the first "KEY": "value" in the last run's JSON.
json_value() {
  sed -nE "s/^ *\"$1\": \"([^\"]*)\",?$/\1/p" <<<"$out" | head -1
}

# buf curl prints JSON one field to a line. Prints each object of the last
# run's JSON on one line, with its own fields only (nested objects on lines of
# their own), then keeps the lines that hold every one of the given strings.
objects_with() {
  local objects
  objects=$(awk '
    /[{]$/ { depth++; fields[depth] = ""; next }
    /^ *[}],?$/ { print fields[depth]; depth--; next }
    { sub(/^ +/, ""); fields[depth] = fields[depth] " " $0 }
  ' <<<"$out")
  local needle
  for needle in "$@"; do
    objects=$(grep -F -- "$needle" <<<"$objects")
  done
  printf '%s' "$objects"
}

# Passes if the last run's JSON holds an object with every one of the strings.
has_object() { [[ -n $(objects_with "$@") ]]; }
lacks_object() { [[ -z $(objects_with "$@") ]]; }

# --- Setup: buf, a grpcurl that must not be called, and the server.
if [[ ! -x $ROOT/tests/node/node_modules/.bin/buf ]] && ! command -v buf >/dev/null; then
  echo "not ok 1 - buf is installed (run tools/setup)"
  failed=1
  finish
fi
export BUF_CACHE_DIR=$dir/buf-cache
mkdir -p "$dir/bin"
cat >"$dir/bin/grpcurl" <<EOF
#!/bin/sh
touch "$dir/grpcurl-called"
echo "grpcurl must not be called by this test" >&2
exit 99
EOF
chmod +x "$dir/bin/grpcurl"
# buf, through a stand-in that keeps each call's arguments and standard input,
# to check that the admin token is never on a command line.
real_buf=$(command -v buf 2>/dev/null || echo "$ROOT/tests/node/node_modules/.bin/buf")
cat >"$dir/bin/buf" <<EOF
#!/bin/sh
printf '%s\n' "\$@" >"$dir/buf-args"
case " \$* " in
  *" @- "*) tee "$dir/buf-stdin" | exec "$real_buf" "\$@" ;;
  *) exec "$real_buf" "\$@" ;;
esac
EOF
chmod +x "$dir/bin/buf"
export PATH=$dir/bin:$PATH

"$HAMLETD" --listen=127.0.0.1:0 --admin_listen=127.0.0.1:0 --metrics_listen=127.0.0.1:0 --data_dir="$dir/data" \
  --ready_file="$dir/ready" >/dev/null 2>"$dir/hamletd.log" & # stdout repeats the admin token.
server_pid=$!
started=$SECONDS

# The ready file holds three complete lines, device, admin and metrics address, once the
# server accepts calls.
ready_re=$'^127\\.0\\.0\\.1:[0-9]+\n(127\\.0\\.0\\.1:[0-9]+)\n127\\.0\\.0\\.1:[0-9]+\n$'
admin_address=""
deadline=$((SECONDS + READY_LIMIT))
while ((SECONDS < deadline)) && kill -0 "$server_pid" 2>/dev/null; do
  ready=""
  [[ ! -f $dir/ready ]] || IFS= read -r -d '' ready <"$dir/ready"
  if [[ $ready =~ $ready_re ]]; then
    admin_address=${BASH_REMATCH[1]}
    break
  fi
  sleep 0.05
done
if [[ -z $admin_address ]]; then
  echo "not ok 1 - $HAMLETD starts and writes its ready file within $READY_LIMIT s"
  sed 's/^/#   /' "$dir/hamletd.log"
  failed=1
  finish
fi
token_file=$dir/data/admin.token
echo "# hamletd ready in $((SECONDS - started)) s, admin listener $admin_address"

# --- Help.
admin_raw --help
check "--help exits with 0" rc_is 0
check "--help shows the raw grpcurl line" out_has "$ HAMLET_ADMIN_TOKEN=TOKEN grpcurl -plaintext -expand-headers -H 'authorization: Bearer \${HAMLET_ADMIN_TOKEN}'"
for command in "devices list" "devices enroll" "devices revoke" "stats" "conflicts list" "conflicts resolve" \
  "audit list" "replication status" "replication pause" "replication resume" "services" "health"; do
  check "--help describes '$command'" out_matches "^  $command( |$)"
done
for method in EnrollDevice RevokeDevice ListDevices GetServerStats ListConflicts ResolveConflict ListAuditEntries \
  GetReplicationStatus PauseReplication ResumeReplication; do
  check "--help shows the grpcurl line for $method" out_matches "^ +\\$ HAMLET_ADMIN_TOKEN=TOKEN grpcurl -plaintext .* hamlet\\.v1\\.AdminService/$method\$"
done
help_text=$out
admin_raw help
check "'help' prints the same as --help" equal "$out" "$help_text"

# --- Reflection and health, which need no token.
admin_raw --client=buf --server="$admin_address" --token-file=/nonexistent services
check "services lists AdminService, without a token" out_matches '^hamlet\.v1\.AdminService$'
admin_raw --client=buf --server="$admin_address" --token-file=/nonexistent health
check "health answers SERVING" out_has '"status": "SERVING"'

# --- Stats.
admin stats
check "stats exits with 0" rc_is 0
check "stats shows lastSeq $SEEDED_UNITS" equal "$(json_value lastSeq)" "$SEEDED_UNITS"
check "stats shows townCode $TOWN_CODE" equal "$(json_value townCode)" "$TOWN_CODE"

admin devices list
admin_device=$(objects_with '"role": "ROLE_ADMIN"' | sed -nE 's/.*"deviceId": "([^"]*)".*/\1/p' | head -1)
check "devices list shows the admin's device" not_empty "$admin_device"

# --- Enrol, list, revoke, audit.
device=$(cat /proc/sys/kernel/random/uuid)
admin devices enroll --person=tt-hamlet-admin --role=team_leader --unit="$UNIT" --device-id="$device" --ttl-days=30
check "enroll a team leader for $UNIT exits with 0" rc_is 0
check "enroll returns the device id" equal "$(json_value deviceId)" "$device"
check "enroll returns a token" out_matches '^ *"token": "hmt_[A-Za-z0-9_-]+",?$'
expire=$(date -d "$(json_value expireTime)" +%s 2>/dev/null || echo 0)
ttl_ok() { local ttl=$((expire - $(date +%s))); ((ttl > 30 * 86400 - 600 && ttl <= 30 * 86400)); }
check "--ttl-days=30 expires in 30 days" ttl_ok

admin devices enroll --person=tt-hamlet-admin-2 --role=ROLE_TEAM_LEADER --unit="$UNIT"
check "enroll with --role=ROLE_TEAM_LEADER and no device id exits with 0" rc_is 0
second_device=$(json_value deviceId)
check "enroll generates a device id" [ -n "$second_device" ]

admin devices list
check "devices list shows the team leader with role and unit" has_object "\"deviceId\": \"$device\"" \
  '"personId": "tt-hamlet-admin"' '"role": "ROLE_TEAM_LEADER"' "\"unitCode\": \"$UNIT\""
check "devices list shows the second team leader" has_object "\"deviceId\": \"$second_device\"" \
  '"role": "ROLE_TEAM_LEADER"' "\"unitCode\": \"$UNIT\""
check "the new device is not revoked" lacks_object "\"deviceId\": \"$device\"" '"revokeTime"'

admin devices list --page-size=1
check "devices list --page-size=1 shows one device" equal "$(grep -c '"deviceId"' <<<"$out")" 1
first_page=$(json_value deviceId)
page_token=$(json_value nextPageToken)
check "devices list --page-size=1 gives a next page token" not_empty "$page_token"
admin devices list --page-size=1 --page-token="$page_token"
check "--page-token gives the next device" [ -n "$(json_value deviceId)" -a "$(json_value deviceId)" != "$first_page" ]

admin devices revoke --device-id="$device" --reason="lost phone"
check "revoke exits with 0" rc_is 0
check "revoke returns the device with revokeTime" has_object "\"deviceId\": \"$device\"" '"revokeTime"'

admin devices list
check "devices list shows revokeTime and the reason" has_object "\"deviceId\": \"$device\"" '"revokeTime"' \
  '"revokeReason": "lost phone"'

admin audit list
check "audit list exits with 0" rc_is 0
check "audit list shows the enrolment by the admin's device" has_object '"action": "enroll"' \
  "\"target\": \"$device\"" "\"deviceId\": \"$admin_device\""
check "audit list shows the revocation by the admin's device" has_object '"action": "revoke"' \
  "\"target\": \"$device\"" "\"deviceId\": \"$admin_device\"" '"detail": "lost phone"'

# --- Conflicts: none on a fresh server.
admin conflicts list
check "conflicts list is empty" out_is "{}"
admin conflicts list --unit="$UNIT"
check "conflicts list --unit=$UNIT is empty" out_is "{}"

# --- Reports.
admin report --unit=206 --from=2012-01-01 --to=2017-08-24
check "report exits with 0" rc_is 0
check "report names the unit and whole months" has_object '"unitCode": "206"' '"fromMonth": "2012-01"' '"toMonth": "2017-08"'
admin report --unit=206 --from=2012-01-01
check "report without --to is a usage error" rc_is 2
admin report --unit=206 --from=2012-01-01 --to=2017-08-24 --for=everyone
check "report --for must be town or province" rc_is 2

# --- Backup, with its progress.
admin backup --dir="$dir/backup-1"
check "backup exits with 0" rc_is 0
check "backup reports progress and ends done" has_object '"done": true' '"bytesCopied"' '"filesTotal"'
check "the first backup is backup 1" has_object '"done": true' '"backupId": 1'
check "the backup directory holds BackupEngine's record of it" test -f "$dir/backup-1/meta/1"
admin backup --dir="$dir/backup-1"
check "a second backup into the same directory is backup 2" has_object '"done": true' '"backupId": 2'
admin backup verify --dir="$dir/backup-1"
check "backup verify finds both backups whole" has_object '"backupId": 1' '"ok": true'
check "backup verify lists backup 2 too" has_object '"backupId": 2' '"ok": true'
table=$(find "$dir/backup-1/shared_checksum" -type f -name '*.sst' | head -1)
printf 'X' | dd of="$table" bs=1 seek=100 conv=notrunc status=none
admin backup verify --dir="$dir/backup-1"
check "backup verify names a changed byte" has_object '"problem"'
mkdir -p "$dir/not-backups" && echo x >"$dir/not-backups/file"
admin backup --dir="$dir/not-backups"
check "a backup into a directory of other files fails with failed_precondition" refused_with failed_precondition
admin backup verify --dir="$dir/not-backups"
check "verifying a directory without backups fails with not_found" refused_with not_found
admin backup --dir=relative/path
check "a relative backup directory is a usage error" rc_is 2

# --- Replication: this server has no upstream (no --upstream), so it reports
# OFF and refuses to pause or resume. The server checks the reason before the
# upstream, so failed_precondition (not invalid_argument) also shows that
# --reason reached it.
admin replication status
check "replication status exits with 0" rc_is 0
check "replication status without an upstream is REPLICATION_STATE_OFF" \
  equal "$(json_value state)" REPLICATION_STATE_OFF
check "replication status shows lastSeq $SEEDED_UNITS" equal "$(json_value lastSeq)" "$SEEDED_UNITS"
admin replication pause --reason=x
check "replication pause without an upstream fails with failed_precondition" refused_with failed_precondition
admin replication pause
check "replication pause without --reason exits with 2 naming --reason" usage_error "--reason is required"
admin replication resume
check "replication resume without an upstream fails with failed_precondition" refused_with failed_precondition
admin audit list
audit_lacks() { rc_is 0 && lacks_object "\"action\": \"$1\""; }
check "the refused pause left no audit entry" audit_lacks pause_replication
check "the refused resume left no audit entry" audit_lacks resume_replication

# --- Refusals by the server pass through.
admin devices revoke --device-id=00000000-0000-4000-8000-000000000000 --reason=test
check "revoking an unknown device fails with not_found" refused_with not_found
admin --token=hmt_not-a-real-token stats
check "a wrong --token fails with unauthenticated" refused_with unauthenticated
echo hmt_not-a-real-token >"$dir/wrong.token"
admin_raw --client=buf --server="$admin_address" --token-file="$dir/wrong.token" stats
check "a wrong token file fails with unauthenticated" refused_with unauthenticated
admin_raw --client=buf --server="$admin_address" --token-file="$dir/wrong.token" --token="$(<"$token_file")" stats
check "--token overrides --token-file" equal "$(json_value townCode)" "$TOWN_CODE"

# --- Usage errors: exit 2 and name the flag, without calling the server.
admin devices enroll --role=team_leader --unit="$UNIT"
check "enroll without --person exits with 2 naming --person" usage_error "--person is required"
admin devices enroll --person=x --unit="$UNIT"
check "enroll without --role exits with 2 naming --role" usage_error "--role is required"
admin devices enroll --person=x --role=chief --unit="$UNIT"
check "enroll with an unknown role exits with 2" usage_error "--role=chief is not a role"
admin devices revoke --device-id="$second_device"
check "revoke without --reason exits with 2 naming --reason" usage_error "--reason is required"
admin conflicts resolve --record="$device" --value-json='{}' --resolver=x --device-id="$admin_device"
check "conflicts resolve without --field exits with 2 naming --field" usage_error "--field is required"
admin devices list --page-size=ten
check "a malformed --page-size exits with 2" usage_error "--page-size must be a whole number"
admin devices list --colour=red
check "an unknown flag exits with 2" usage_error "unknown flag --colour"
admin_raw devices
check "an unknown command exits with 2" usage_error "unknown command"

# --- Dry run: prints the exact command and calls nothing.
admin devices list
devices_before=$(grep -c '"deviceId"' <<<"$out")
admin_raw --server="$admin_address" --token-file="$token_file" --dry-run \
  devices enroll --person=dry-run --role=member --unit="$UNIT"
check "--dry-run devices enroll exits with 0" rc_is 0
check "--dry-run prints the grpcurl command when grpcurl is on PATH" out_matches \
  "^HAMLET_ADMIN_TOKEN=hmt_[A-Za-z0-9_-]+ grpcurl -plaintext -expand-headers -H 'authorization: Bearer \\\$\\{HAMLET_ADMIN_TOKEN\\}' -d '\\{\"personId\":\"dry-run\",\"role\":\"ROLE_MEMBER\",\"unitCode\":\"$UNIT\"\\}' $admin_address hamlet\\.v1\\.AdminService/EnrollDevice\$"
admin --dry-run devices enroll --person=dry-run --role=member --unit="$UNIT"
check "--client=buf --dry-run prints the buf curl command" out_matches \
  "buf curl --protocol grpc --http2-prior-knowledge -H @- -d '.*' http://$admin_address/hamlet\\.v1\\.AdminService/EnrollDevice <<<'authorization: Bearer hmt_[A-Za-z0-9_-]+'\$"
admin devices list
check "--dry-run enrolled nothing" equal "$(grep -c '"deviceId"' <<<"$out")" "$devices_before"
check "--dry-run enrolled no device for person dry-run" lacks_object '"personId": "dry-run"'
admin --dry-run stats
out=$(timeout "$CALL_LIMIT" bash -c "$out" 2>&1)
check "the command --dry-run prints runs as is" equal "$(json_value lastSeq)" "$SEEDED_UNITS"

# --- The token is never on a command line (the process list shows those).
rm -f "$dir/buf-args" "$dir/buf-stdin"
admin stats
check "a call gets its answer with the token on standard input" equal "$(json_value townCode)" "$TOWN_CODE"
check "buf's arguments hold no token" not grep -q "hmt_" "$dir/buf-args"
check "buf read the token from its standard input" grep -q "^authorization: Bearer hmt_" "$dir/buf-stdin"

# --- Defaults: ./data/admin.token, $HAMLET_ADMIN_SERVER, $HAMLET_ADMIN_TOKEN_FILE, 127.0.0.1:7421.
cd "$dir" || exit 1
HAMLET_ADMIN_SERVER=$admin_address admin_raw --client=buf stats
cd - >/dev/null || exit 1
check "\$HAMLET_ADMIN_SERVER and ./data/admin.token are the defaults" equal "$(json_value townCode)" "$TOWN_CODE"
HAMLET_ADMIN_SERVER=$admin_address HAMLET_ADMIN_TOKEN_FILE=$token_file admin_raw --client=buf stats
check "\$HAMLET_ADMIN_TOKEN_FILE names the token file" equal "$(json_value townCode)" "$TOWN_CODE"
admin_raw --client=buf --token=hmt_x --dry-run stats
check "the default server is 127.0.0.1:7421" out_has "http://127.0.0.1:7421/hamlet.v1.AdminService/GetServerStats"

check "grpcurl was never called" [ ! -e "$dir/grpcurl-called" ]

# --- Bundles (last: they add a record and a device the checks above count):
# a phone's outbox carried in, and its pull carried back.
phone() { "$HAMLET_FIELD" --store="$dir/phone" "$@"; }
phone_device=$(phone status | sed -n 's/^device //p')
admin devices enroll --person=tv-bundle --role=member --unit="$UNIT" --device-id="$phone_device"
phone set-token "$(json_value token)" --role=ROLE_MEMBER
phone create mediation_case --unit="$UNIT-K05" --author=tv-bundle --json='{"summary":"mang bằng tay"}' >/dev/null
phone export --out="$dir/to-town.hlb" >/dev/null
admin import "$dir/to-town.hlb"
check "import exits with 0" rc_is 0
check "import reports the batch and ends done" has_object '"done": true' "\"deviceId\": \"$phone_device\"" \
  '"recordsApplied": "1"' '"batchesDone": 1'
admin import "$dir/to-town.hlb"
check "importing the same bundle again finds its batch held already" has_object '"done": true' '"alreadyHeld": true'
check "importing the same bundle again applies nothing" lacks_object '"recordsApplied"'
admin export --device-id="$phone_device" --out="$dir/to-phone.hlb"
check "export exits with 0" rc_is 0
check "export ends done with the file's size" has_object '"done": true' '"bytes"' '"fromBeginning": true'
check "export writes the bundle readable by its owner only" equal "$(stat -c %a "$dir/to-phone.hlb")" 600
check "the phone imports the bundle exported for it" contains "$(phone import "$dir/to-phone.hlb")" "imported"
echo "not a bundle" >"$dir/not-a-bundle"
admin import "$dir/not-a-bundle"
check "importing a file that is not a bundle fails with invalid_argument" refused_with invalid_argument
admin import "$dir/to-phone.hlb"
check "importing a bundle meant for a phone fails with invalid_argument" refused_with invalid_argument
admin export --device-id="$phone_device"
check "export without --out exits with 2 naming --out" usage_error "--out is required"
admin import
check "import without a file exits with 2" usage_error "--file is required"

# --- The server stops cleanly.
stop_server
check "hamletd exits with 0 on SIGTERM" equal "$server_status" 0

finish
