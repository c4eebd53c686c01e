#!/usr/bin/env bash
# bench/cdp.sh — continuous data protection benchmarks (issue #3), run side
# by side with their peers in one run and reported as ratios.
#
#   bench/cdp.sh [--quick] [--out DIR] [--work DIR] [--port BASE] [--only LIST] [--keep]
#
#   --quick      small sizes (a few minutes)
#   --out DIR    results (default bench-out/ at the repository root):
#                cdp.md (table), cdp.tsv (every figure), cdp-logs/
#   --work DIR   scratch space (default /var/tmp/standby-cdp)
#   --port BASE  first of 5 loopback TCP ports (default 18700)
#   --only LIST  comma-separated subset of: view,export,ingest
#   --keep       keep the scratch directory
#
# 1. view   POST /machines/{m}/views latency at a point "far back", on a
#           1 GiB and a 16 GiB sparse disk; target 16G/1G ≈ 1× (≤ 1.5×).
#           "1 h back" is simulated: a point is taken, then VIEW_MB of 64 KiB
#           random overwrites of real data go through the agent after it,
#           so the view has to look past that much journal.
# 2. export standby export --format raw|qcow2 of a point against qemu-img
#           convert -O raw|qcow2 of the replica image (outputs fsynced);
#           ratio qemu-img time / standby time, target ≥ 0.8×.
# 3. ingest the same fio randwrite 64k amount through the agent with the
#           master target's journal on (default) and --no-journal; ratio of
#           apply throughput on/off, target ≥ 0.7×; write amplification =
#           master target write_bytes (/proc/PID/io) / bytes applied.
#
# Must run as root. Every role runs as its own process on loopback with
# mutual TLS, as in production.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
QUICK=0
OUT=$ROOT/bench-out
WORK=/var/tmp/standby-cdp
BASE_PORT=18700
ONLY=view,export,ingest
KEEP=0
while [ $# -gt 0 ]; do
	case $1 in
	--quick) QUICK=1 ;;
	--out) OUT=$2; shift ;;
	--work) WORK=$2; shift ;;
	--port) BASE_PORT=$2; shift ;;
	--only) ONLY=$2; shift ;;
	--keep) KEEP=1 ;;
	-h | --help) sed -n '2,27p' "$0"; exit 0 ;;
	*) echo "unknown option $1" >&2; exit 2 ;;
	esac
	shift
done

if [ "$QUICK" = 1 ]; then
	VIEW_SMALL_MB=256 VIEW_BIG_MB=4096 VIEW_MB=64 VIEW_OPENS=9
	EXP_MB=256
	ING_DISK_MB=256 ING_MB=256
else
	VIEW_SMALL_MB=1024 VIEW_BIG_MB=16384 VIEW_MB=512 VIEW_OPENS=21
	EXP_MB=2048
	ING_DISK_MB=1024 ING_MB=1024
fi
EXP_PCT=60
EXP_REPEAT=3

P_MT=$BASE_PORT P_MTS=$((BASE_PORT + 1)) P_PS=$((BASE_PORT + 2)) P_PSS=$((BASE_PORT + 3)) P_AGS=$((BASE_PORT + 4))
MT_S=127.0.0.1:$P_MTS PS_S=127.0.0.1:$P_PSS AG_S=127.0.0.1:$P_AGS
M=bench

LOGS=$OUT/cdp-logs
mkdir -p "$OUT" "$LOGS" "$WORK"
rm -f "$LOGS"/*
RUNLOG=$LOGS/run.log
TSV=$OUT/cdp.tsv
MD=$OUT/cdp.md
: >"$RUNLOG"
printf 'benchmark\tcase\tmetric\tvalue\n' >"$TSV"

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" | tee -a "$RUNLOG" >&2; }
die() { log "FATAL: $*"; exit 1; }
want() { [[ ",$ONLY," == *",$1,"* ]]; }
now_ns() { date +%s%N; }
calc() { awk "BEGIN{printf \"%.${2:-3}f\", ($1)}"; }
rec() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$TSV"; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
median() { sort -g | awk '{a[NR]=$1} END{if (NR%2) print a[(NR+1)/2]; else printf "%.6f\n", (a[NR/2]+a[NR/2+1])/2}'; }
# timed CMD...: sets T to the wall seconds of CMD
timed() {
	local s
	s=$(now_ns)
	"$@"
	T=$(calc "($(now_ns) - $s) / 1e9")
}
hsize() { if [ "$1" -ge 1024 ] && [ $(($1 % 1024)) = 0 ]; then echo "$(($1 / 1024)) GiB"; else echo "$1 MiB"; fi; }
verdict() { [ "$(calc "$1" 0)" = 1 ] && echo met || echo MISSED; }

[ "$(id -u)" = 0 ] || die "run as root"
for t in fio qemu-img curl jq; do command -v $t >/dev/null || die "$t is missing (apt-get install fio qemu-utils curl jq)"; done
fio --enghelp=nbd >/dev/null 2>&1 || die "this fio has no nbd engine"

BIN=$WORK/bin
mkdir -p "$BIN"
log "building standby and bench/benchutil (load $(loadavg))"
(cd "$ROOT" && go build -o "$BIN/standby" ./cmd/standby && go build -o "$BIN/benchutil" ./bench/benchutil) || die "build failed"
SB=$BIN/standby
BU=$BIN/benchutil
GITREV=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
LOAD_START=$(loadavg)

PKI=$WORK/pki
rm -rf "$PKI"
"$SB" certs --dir "$PKI" --host 127.0.0.1 --id agent/$M --id process-server/ps1 --id master-target/mt1 >"$LOGS/certs.log"
tlsargs() { echo --ca "$PKI/ca.crt" --cert "$PKI/$1.crt" --key "$PKI/$1.key"; }

# ---------------------------------------------------------------- processes
declare -A PIDS=()
start_bg() { # NAME LOGFILE CMD...
	local name=$1 logf=$2
	shift 2
	"$@" >"$logf" 2>&1 &
	PIDS[$name]=$!
}
stop_bg() { # NAME
	local name=$1 pid=${PIDS[$1]:-}
	[ -n "$pid" ] || return 0
	kill -TERM "$pid" 2>/dev/null || true
	for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
	kill -KILL "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
	unset "PIDS[$name]"
}
stop_all() { stop_bg agent; stop_bg ps; stop_bg mt; }
cleanup() {
	local n
	for n in "${!PIDS[@]}"; do stop_bg "$n"; done
	[ "$KEEP" = 1 ] || rm -rf "$WORK"/c1 "$WORK"/c2 "$WORK"/c3
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_cluster DIR TAG IMAGE [master-target flags]: all three roles, and
# waits for the initial copy to finish
start_cluster() {
	local dir=$1 tag=$2 img=$3 s line
	shift 3
	rm -rf "$dir/mt" "$dir/ps" "$dir/agent"
	start_bg mt "$LOGS/$tag-mt.log" "$SB" master-target --listen 127.0.0.1:$P_MT --data-dir "$dir/mt" --status "$MT_S" \
		--point-interval 1s $(tlsargs master-target-mt1) "$@"
	"$BU" wait-up "$MT_S"
	start_bg ps "$LOGS/$tag-ps.log" "$SB" process-server --listen 127.0.0.1:$P_PS --cache-dir "$dir/ps" --master-target 127.0.0.1:$P_MT \
		--status "$PS_S" $(tlsargs process-server-ps1)
	"$BU" wait-up "$PS_S"
	s=$(now_ns)
	start_bg agent "$LOGS/$tag-agent.log" "$SB" agent --machine $M --state-dir "$dir/agent" --process-server 127.0.0.1:$P_PS \
		--disk "disk0=$img" --nbd "unix:$dir/agent.sock" --status "$AG_S" $(tlsargs agent-$M)
	"$BU" wait-up "$AG_S"
	line=$(wait_sync --start "$s" --timeout 20m) || die "initial copy ($tag) did not finish"
	log "   $tag: initial copy of $(($(du -k "$img" | cut -f1) / 1024)) MiB allocated done in $(sed -n 's/^elapsed=\([^ ]*\).*/\1/p' <<<"$line") s"
	SOCK=$dir/agent.sock
}
wait_sync() { "$BU" wait-sync --agent "$AG_S" --mt "$MT_S" --poll 50ms "$@"; }
mt_field() { curl -sf "http://$MT_S/status" | jq -r ".machines[] | select(.machine==\"$M\") | .$1"; }
ag_field() { curl -sf "http://$AG_S/status" | jq -r ".$1"; }
# bookmark NAME: an app-consistent point; sets PID_POINT to its point ID once
# the master target lists it
bookmark() {
	"$SB" bookmark --agent "$AG_S" --name "$1" >>"$RUNLOG" 2>&1 || die "bookmark $1 failed"
	for _ in $(seq 200); do
		PID_POINT=$(curl -sf "http://$MT_S/machines/$M/points" | jq -r ".[] | select(.name==\"$1\") | .id" | tail -1)
		[ -n "$PID_POINT" ] && return 0
		sleep 0.05
	done
	die "point $1 never appeared"
}
# fio_nbd NAME SIZE_BYTES IO_MB [extra fio args]: random 64 KiB writes through the agent
fio_nbd() {
	local name=$1 size=$2 mb=$3
	shift 3
	fio --name="$name" --ioengine=nbd --uri="nbd+unix:///disk0?socket=$SOCK" --rw=randwrite --bs=64k --iodepth=16 \
		--size="$size" --io_size="${mb}M" --randseed=4242 --norandommap --output-format=json --output="$LOGS/fio-$name.json" "$@" \
		>>"$RUNLOG" 2>&1 || die "fio $name failed"
}
# fill_file IMG SIZE_BYTES IO_MB: the same random 64 KiB writes (same seed:
# same offsets, other data) straight into the image before replication
fill_file() {
	fio --name=fill --filename="$1" --ioengine=psync --rw=randwrite --bs=64k --size="$2" --io_size="${3}M" \
		--randseed=4242 --norandommap --output-format=terse >>"$RUNLOG" 2>&1 || die "fio fill failed"
}
mt_wbytes() { awk '/^write_bytes:/{print $2}' "/proc/${PIDS[mt]}/io"; }
mt_wchar() { awk '/^wchar:/{print $2}' "/proc/${PIDS[mt]}/io"; }

ROWS=()
row() { ROWS+=("$1"); }

# ---------------------------------------------------------------- 1: view open
VIEW_RES=()
view_case() { # SIZE_MB
	local mb=$1 dir=$WORK/c1 img size tag=view-${1}M times=() t i v body
	rm -rf "$dir"
	mkdir -p "$dir"
	img=$dir/disk.img
	size=$((mb << 20))
	truncate -s "$size" "$img"
	fill_file "$img" "$size" "$VIEW_MB"
	start_cluster "$dir" "$tag" "$img"
	bookmark "far-back"
	local point=$PID_POINT
	timed fio_nbd "after-$mb" "$size" "$VIEW_MB"
	wait_sync --timeout 20m >/dev/null || die "$tag: no drain after the workload"
	local jkib
	jkib=$(du -sk "$dir/mt" | cut -f1)
	log "   $tag: point $point, then ${VIEW_MB} MiB of 64 KiB random overwrites through the agent in ${T}s; master target dir now $((jkib / 1024)) MiB (load $(loadavg))"
	rec view "$tag" written_after_point_mib "$VIEW_MB"
	# one warm-up open, not counted
	for i in $(seq 0 "$VIEW_OPENS"); do
		body=$(curl -sf -w '\n%{time_total}' -X POST -H 'Content-Type: application/json' -d "{\"point\":\"$point\"}" "http://$MT_S/machines/$M/views") ||
			die "$tag: view open failed: $body"
		t=$(tail -1 <<<"$body")
		v=$(head -n -1 <<<"$body" | jq -r .id)
		[ -n "$v" ] && [ "$v" != null ] || die "$tag: no view id in $body"
		[ "$(head -n -1 <<<"$body" | jq -r '.exports | length')" -ge 1 ] || die "$tag: view has no export: $body"
		if [ "$i" = 1 ]; then # a read through the view proves it is usable
			local uri
			uri=$(head -n -1 <<<"$body" | jq -r '.exports[0].uri')
			nbdinfo --size "$uri" >>"$RUNLOG" 2>&1 || die "$tag: view $uri not readable"
		fi
		curl -sf -X DELETE "http://$MT_S/views/$v" >/dev/null || die "$tag: closing view $v"
		[ "$i" = 0 ] && continue
		times+=("$t")
		rec view "$tag" open_seconds "$t"
	done
	local med
	med=$(printf '%s\n' "${times[@]}" | median)
	VIEW_MIN+=("$(printf '%s\n' "${times[@]}" | sort -g | head -1)")
	log "   $tag: view open median $(calc "$med*1000" 2) ms over ${VIEW_OPENS} opens (all: ${times[*]})"
	rec view "$tag" open_median_seconds "$med"
	VIEW_RES+=("$med")
	stop_all
	rm -rf "$dir"
}
bench_view() {
	log "== 1. open a view at a point ${VIEW_MB} MiB of writes back, ${VIEW_SMALL_MB} MiB vs ${VIEW_BIG_MB} MiB sparse disk"
	VIEW_RES=() VIEW_MIN=()
	view_case "$VIEW_SMALL_MB"
	view_case "$VIEW_BIG_MB"
	local a=${VIEW_RES[0]} b=${VIEW_RES[1]} r
	r=$(calc "$b / $a" 2)
	rec view ratio big_over_small "$r"
	local rmin
	rmin=$(calc "${VIEW_MIN[1]} / ${VIEW_MIN[0]}" 2)
	rec view ratio_min big_over_small "$rmin"
	row "| 1. view open, point ${VIEW_MB} MiB of writes back (\"1 h\" simulated) | $(hsize "$VIEW_SMALL_MB"): $(calc "$a*1000" 1) ms · $(hsize "$VIEW_BIG_MB"): $(calc "$b*1000" 1) ms (median of $VIEW_OPENS; fastest $(calc "${VIEW_MIN[0]}*1000" 1) / $(calc "${VIEW_MIN[1]}*1000" 1) ms) | ${r}× growth (fastest: ${rmin}×) | ≈1× (≤ 1.5×) | $(verdict "$r <= 1.5") |"
}

# ---------------------------------------------------------------- 2: export
bench_export() {
	local dir=$WORK/c2 img size data_mb rep out t_sb t_qi r
	log "== 2. materialise a ${EXP_MB} MiB disk (${EXP_PCT} % random data) vs qemu-img convert"
	rm -rf "$dir"
	mkdir -p "$dir/out"
	img=$dir/disk.img
	size=$((EXP_MB << 20))
	data_mb=$((EXP_MB * EXP_PCT / 100))
	truncate -s "$size" "$img"
	# data in 4 MiB runs every ~6.7 MiB over the whole disk, holes between
	fio --name=data --filename="$img" --ioengine=psync --rw=write:$((4096 * 100 / EXP_PCT - 4096))k --bs=4M --size="$size" \
		--output-format=terse >>"$RUNLOG" 2>&1 || die "fio data failed"
	log "   image: $(($(du -k "$img" | cut -f1) / 1024)) MiB allocated of $EXP_MB MiB"
	start_cluster "$dir" export "$img"
	bookmark "export"
	local point=$PID_POINT
	rep=$dir/mt/$M/disk0.img
	[ -f "$rep" ] || die "no replica at $rep"
	cat "$rep" >/dev/null # warm: both read the same replica from the page cache
	rec export image allocated_mib "$(($(du -k "$img" | cut -f1) / 1024))"
	local fmt k took t_srv
	for fmt in raw qcow2; do
		t_qi= t_sb= t_srv=
		for k in $(seq "$EXP_REPEAT"); do
			out=$dir/out/qi.$fmt
			rm -f "$out"
			timed sh -c "qemu-img convert -f raw -O $fmt '$rep' '$out' && sync '$out'"
			rec export "$fmt" qemu_img_run_seconds "$T"
			{ [ -z "$t_qi" ] || [ "$(calc "$T < $t_qi" 0)" = 1 ]; } && t_qi=$T
			rm -f "$out"
			out=$dir/out/sb.$fmt
			rm -f "$out"
			timed sh -c "'$SB' export --master-target '$MT_S' --machine $M --point $point --format $fmt --path '$out' -o json >'$dir/export.json' 2>>'$RUNLOG' && sync '$out'"
			took=$(jq -r '.took_ns / 1e9' "$dir/export.json")
			rec export "$fmt" standby_run_seconds "$T"
			rec export "$fmt" standby_server_run_seconds "$took"
			if [ -z "$t_sb" ] || [ "$(calc "$T < $t_sb" 0)" = 1 ]; then t_sb=$T t_srv=$took; fi
			[ -s "$out" ] || die "standby export $fmt wrote nothing"
			[ "$k" = "$EXP_REPEAT" ] || rm -f "$out"
		done
		if [ "$fmt" = qcow2 ]; then qemu-img check "$out" >>"$RUNLOG" 2>&1 || log "   WARNING: qemu-img check failed on the standby qcow2"; fi
		if [ "$fmt" = raw ]; then cmp -s "$out" "$rep" || log "   WARNING: standby raw export differs from the replica"; fi
		rm -f "$out"
		r=$(calc "$t_qi / $t_sb" 2)
		log "   $fmt: best of $EXP_REPEAT: qemu-img convert ${t_qi}s ($(calc "$EXP_MB / $t_qi" 0) MiB/s), standby export ${t_sb}s ($(calc "$EXP_MB / $t_sb" 0) MiB/s; the job itself took ${t_srv}s, the rest is the CLI, its HTTP calls and the sync), ratio ${r}×, $(calc "$t_qi / $t_srv" 2)× on the job time (load $(loadavg))"
		rec export "$fmt" qemu_img_seconds "$t_qi"
		rec export "$fmt" standby_seconds "$t_sb"
		rec export "$fmt" standby_server_seconds "$t_srv"
		rec export "$fmt" ratio "$r"
		row "| 2. export --format $fmt vs qemu-img convert -O $fmt ($EXP_MB MiB, ${EXP_PCT} % data, warm) | standby $(calc "$t_sb" 2) s (job $(calc "$t_srv" 2) s) · qemu-img $(calc "$t_qi" 2) s, best of $EXP_REPEAT | ${r}× (job: $(calc "$t_qi / $t_srv" 2)×) | ≥ 0.8× | $(verdict "$r >= 0.8") |"
	done
	stop_all
	rm -rf "$dir"
}

# ---------------------------------------------------------------- 3: ingest
ING_TPUT=() ING_WA=() ING_WAN=()
ingest_case() { # TAG [master-target flags]
	local tag=$1 dir=$WORK/c3 img size b0 w0 s t b1 w1 last applied tput wa
	shift
	rm -rf "$dir"
	mkdir -p "$dir"
	img=$dir/disk.img
	size=$((ING_DISK_MB << 20))
	# the whole disk holds real data, so every overwrite has a before-image
	fio --name=data --filename="$img" --ioengine=psync --rw=write --bs=4M --size="$size" --output-format=terse >>"$RUNLOG" 2>&1 || die "fio data failed"
	start_cluster "$dir" "ingest-$tag" "$img" "$@"
	sleep 2 # let the last initial-copy point and checkpoint settle
	b0=$(mt_field bytes_applied)
	w0=$(mt_wbytes) c0=$(mt_wchar)
	s=$(now_ns)
	fio_nbd "ingest-$tag" "$size" "$ING_MB"
	# until the replica holds everything written: applied through the
	# agent's last sequence and nothing dirty (if the agent's queue overflowed
	# into its bitmap, the resync of those blocks counts too)
	local line
	line=$(wait_sync --start "$s" --timeout 20m) || die "ingest-$tag: not synced after 20 min"
	t=$(sed -n 's/^elapsed=\([^ ]*\).*/\1/p' <<<"$line")
	local ovf
	ovf=$(sed -n 's/.*overflows=\([0-9]*\).*/\1/p' <<<"$line")
	rec ingest "$tag" agent_overflows "$ovf"
	b1=$(mt_field bytes_applied)
	w1=$(mt_wbytes)
	sleep 3 # checkpoint/journal writes that follow the last apply
	local w2 c2 wan
	w2=$(mt_wbytes) c2=$(mt_wchar)
	tput=$(calc "($b1 - $b0) / 1048576 / $t" 1)
	wa=$(calc "($w2 - $w0) / ($b1 - $b0)" 2)
	wan=$(calc "($c2 - $c0) / ($b1 - $b0)" 2)
	local fio_bw
	fio_bw=$(jq -r '.jobs[0].write.bw_bytes / 1048576' "$LOGS/fio-ingest-$tag.json")
	log "   $tag: $(calc "($b1 - $b0) / 1048576" 0) MiB applied in ${t}s = ${tput} MiB/s (fio saw $(calc "$fio_bw" 1) MiB/s; agent queue overflows so far: $ovf); fio wrote $ING_MB MiB; master target write syscalls $(calc "($c2 - $c0) / 1048576" 0) MiB (wchar), kernel-accounted write_bytes $(calc "($w2 - $w0) / 1048576" 0) MiB: write amplification ${wan}× (wchar), ${wa}× (write_bytes) (load $(loadavg))"
	rec ingest "$tag" applied_mib_per_s "$tput"
	rec ingest "$tag" fio_mib_per_s "$(calc "$fio_bw" 1)"
	rec ingest "$tag" seconds "$t"
	rec ingest "$tag" applied_mib "$(calc "($b1 - $b0) / 1048576" 1)"
	rec ingest "$tag" write_amplification_wchar "$wan"
	rec ingest "$tag" write_amplification_write_bytes "$wa"
	ING_TPUT+=("$tput") ING_WA+=("$wa") ING_WAN+=("$wan")
	stop_all
	rm -rf "$dir"
}
bench_ingest() {
	log "== 3. ingest: ${ING_MB} MiB of 64 KiB random overwrites on a ${ING_DISK_MB} MiB disk, journal on vs --no-journal"
	ING_TPUT=() ING_WA=() ING_WAN=()
	ingest_case journal-on
	ingest_case journal-off --no-journal
	local r
	r=$(calc "${ING_TPUT[0]} / ${ING_TPUT[1]}" 2)
	rec ingest ratio on_over_off "$r"
	row "| 3. ingest, retention on vs off (${ING_MB} MiB randwrite 64k, time until in sync) | on ${ING_TPUT[0]} MiB/s · off ${ING_TPUT[1]} MiB/s | ${r}× | ≥ 0.7× | $(verdict "$r >= 0.7") |"
	row "| 3. write amplification at the master target (bytes written / bytes applied) | wchar: on ${ING_WAN[0]}× · off ${ING_WAN[1]}× (kernel write_bytes: on ${ING_WA[0]}× · off ${ING_WA[1]}×) | on − off $(calc "${ING_WAN[0]} - ${ING_WAN[1]}" 2) | reported | — |"
}

want view && bench_view
want export && bench_export
want ingest && bench_ingest

LOAD_END=$(loadavg)
{
	echo "# standby CDP benchmarks"
	echo
	echo "$(date -u +%Y-%m-%dT%H:%M:%SZ), commit $GITREV, $(nproc) CPUs, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), mode $([ "$QUICK" = 1 ] && echo quick || echo full)."
	echo "Load average at start $LOAD_START, at end $LOAD_END (the machine may be shared: figures under load are noisy)."
	echo
	echo "| benchmark | measured | ratio | target | verdict |"
	echo "|---|---|---|---|---|"
	printf '%s\n' "${ROWS[@]}"
	echo
	echo "Notes:"
	echo "- 1: \"1 h back\" is simulated by the amount written after the point (${VIEW_MB} MiB of 64 KiB random overwrites of"
	echo "  real data through the agent), not by time. Open = POST /machines/$M/views, curl time_total, median; one warm-up open is discarded."
	echo "- 2: both read the same replica file with a warm page cache; outputs fsynced (sync FILE) inside the timing; ratio = qemu-img time /"
	echo "  standby time (wall time of the CLI, which waits on the job with GET /exports/ID?wait=); \"job\" is the export job's own took_ns."
	echo "- 3: throughput = bytes_applied delta / time from the first write until the replica is in sync (applied through the"
	echo "  agent's last_seq, nothing dirty: blocks the agent tracked in its bitmap after a queue overflow are resynced and count);"
	echo "  write amplification = master target /proc/PID/io wchar delta (bytes passed to write syscalls: intake log, replica,"
	echo "  journal, checkpoints, plus a few KiB of socket acks; until 3 s after the last apply) / bytes applied. Expected ≈ 2 off"
	echo "  (intake + replica), ≈ 3 on (+ before-images). /proc/PID/io write_bytes is shown too but overstates on this kernel:"
	echo "  ext4 large folios account a whole folio (up to 2 MiB) each time a 64 KiB overwrite dirties it (a 64 MiB test of"
	echo "  64 KiB pwrite+fdatasync shows 2 GiB of write_bytes)."
	echo "- Every figure: cdp.tsv; logs: cdp-logs/."
} >"$MD"
cat "$MD"
