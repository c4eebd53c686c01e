#!/usr/bin/env bash
# bench/run.sh — standby's benchmarks, run side by side with their peers in
# one run and reported as ratios (see docs/benchmarks.md).
#
#   bench/run.sh [--quick] [--out DIR] [--work DIR] [--repeat N] [--only LIST]
#                [--compression C] [--port BASE] [--keep]
#
#   --quick        small sizes, a smoke run of a few minutes
#   --out DIR      results (default: bench-out/ at the repository root):
#                  results.md, results.tsv, logs/, fio/, csv/
#   --work DIR     scratch space for images (default /var/tmp/standby-bench);
#                  needs about 4x the initial-copy image size free
#   --repeat N     repetitions of benchmarks 1 and 2 (default 1, to stay
#                  well under 30 minutes); the best of N is reported, every
#                  run is in results.tsv
#   --only LIST    comma-separated subset of: initial,intercept,churn,catchup,go
#   --compression  process server compression (default adaptive, the default
#                  of the binary)
#   --port BASE    first of 6 loopback TCP ports to use (default 17900)
#   --keep         keep the scratch directory
#   STANDBY_AGENT_FLAGS (environment) adds flags to every agent (A/B runs)
#   STANDBY_CHURN_RATES (environment) replaces the churn steps, e.g. "100"
#   STANDBY_FIO_JOBS (environment) picks intercept jobs, e.g. "rand4k-qd32"
#   STANDBY_MT_FLAGS, STANDBY_PS_FLAGS (environment) add flags to the master
#   target and process server
#   --profile      write each role's Go CPU profile to OUT/pprof/TAG-ROLE.pprof
#                  (go tool pprof -top standby OUT/pprof/...)
#
# The ext4 images built from /usr are cached in WORK/images and reused by
# later runs (delete them to rebuild); everything else is rebuilt each run.
#
# Must run as root (drop_caches, apt-get). Every standby role runs as its
# own process on loopback with mutual TLS, as in production.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
QUICK=0
OUT=$ROOT/bench-out
WORK=/var/tmp/standby-bench
REPEAT=
ONLY=initial,intercept,churn,catchup,go
COMPRESSION=adaptive
BASE_PORT=17900
KEEP=0
PROF=
while [ $# -gt 0 ]; do
	case $1 in
	--quick) QUICK=1 ;;
	--out) OUT=$2; shift ;;
	--work) WORK=$2; shift ;;
	--repeat) REPEAT=$2; shift ;;
	--only) ONLY=$2; shift ;;
	--compression) COMPRESSION=$2; shift ;;
	--port) BASE_PORT=$2; shift ;;
	--keep) KEEP=1 ;;
	--profile) PROF=1 ;;
	-h | --help) sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "unknown option $1" >&2; exit 2 ;;
	esac
	shift
done

if [ -n "$PROF" ]; then
	PROF=$OUT/pprof
	mkdir -p "$PROF"
fi

if [ "$QUICK" = 1 ]; then
	INIT_MB=512        # benchmark 1 image
	FIO_MB=256         # benchmark 2/4 file
	FIO_RUNTIME=4
	FIO_RAMP=1
	CHURN_RATES="50 100"
	CHURN_SECS=6
	CATCH_MB=256       # benchmark 3 image
	CATCH_QUEUE=$((2 << 20))
	GOBENCHTIME=200ms
	export NBD_FIO_RUNTIME=${NBD_FIO_RUNTIME:-1} # internal/nbd's fio benchmark
	REPEAT_COPY=${REPEAT:-1} REPEAT_FIO=${REPEAT:-1}
else
	INIT_MB=4096
	FIO_MB=1024
	FIO_RUNTIME=15
	FIO_RAMP=2
	CHURN_RATES="50 75 100 150 200 300"
	CHURN_SECS=30
	CATCH_MB=2048
	CATCH_QUEUE=$((16 << 20))
	GOBENCHTIME=1s
	REPEAT_COPY=${REPEAT:-1} REPEAT_FIO=${REPEAT:-1}
	export NBD_FIO_RUNTIME=${NBD_FIO_RUNTIME:-3} # internal/nbd's fio benchmark
fi
CHANGE_PCT=5
LAG_LIMIT=5
# STANDBY_CHURN_RATES="100" runs chosen churn steps only (profiling one step)
CHURN_RATES=${STANDBY_CHURN_RATES:-$CHURN_RATES}

P_MT=$BASE_PORT P_MTS=$((BASE_PORT + 1)) P_PS=$((BASE_PORT + 2)) P_PSS=$((BASE_PORT + 3)) P_AGS=$((BASE_PORT + 4))
MT_S=127.0.0.1:$P_MTS PS_S=127.0.0.1:$P_PSS AG_S=127.0.0.1:$P_AGS

mkdir -p "$OUT/logs" "$OUT/fio" "$OUT/csv" "$WORK"
rm -f "$OUT"/logs/* "$OUT"/fio/* "$OUT"/csv/*
RUNLOG=$OUT/run.log
TSV=$OUT/results.tsv
: >"$RUNLOG"
printf 'benchmark\tcase\tmetric\tvalue\n' >"$TSV"

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" | tee -a "$RUNLOG" >&2; }
die() { log "FATAL: $*"; exit 1; }
want() { [[ ",$ONLY," == *",$1,"* ]]; }
now_ns() { date +%s%N; }
secs_since() { awk -v a="$1" -v b="$(now_ns)" 'BEGIN{printf "%.3f", (b-a)/1e9}'; }
calc() { awk "BEGIN{printf \"%.${2:-3}f\", ($1)}"; }
kv() { tr ' ' '\n' <<<"$1" | sed -n "s/^$2=//p" | head -1; }
rec() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$TSV"; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
# timed CMD...: runs CMD, sets T (wall seconds) and CPU (user+system seconds of CMD and its children)
timed() {
	local tf=$WORK/.time r u s TIMEFORMAT='%R %U %S'
	{ time { "$@" 2>&3; }; } 3>&2 2>"$tf"
	read -r r u s <"$tf"
	T=$r CPU=$(calc "$u + $s" 2)
}

[ "$(id -u)" = 0 ] || die "run as root (drop_caches, apt-get)"

# ---------------------------------------------------------------- tools
need=()
command -v qemu-img >/dev/null && command -v qemu-nbd >/dev/null || need+=(qemu-utils)
command -v nbdcopy >/dev/null || need+=(libnbd-bin)
command -v fio >/dev/null || need+=(fio)
command -v rsync >/dev/null || need+=(rsync)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
if [ ${#need[@]} -gt 0 ]; then
	log "installing ${need[*]}"
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >>"$RUNLOG" 2>&1
fi
fio --enghelp=nbd >/dev/null 2>&1 || die "this fio has no nbd engine"

CACHE_MODE=cold
drop_caches() {
	sync
	if ! echo 3 >/proc/sys/vm/drop_caches 2>/dev/null; then
		[ "$CACHE_MODE" = warm ] || log "cannot drop page caches: copy benchmarks run warm"
		CACHE_MODE=warm
	fi
}

# ---------------------------------------------------------------- build
BIN=$WORK/bin
mkdir -p "$BIN"
log "building standby and bench/benchutil"
(cd "$ROOT" && go build -o "$BIN/standby" ./cmd/standby && go build -o "$BIN/benchutil" ./bench/benchutil) || die "build failed"
SB=$BIN/standby
BU=$BIN/benchutil
GITREV=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
GITDIRTY=$(cd "$ROOT" && git status --porcelain 2>/dev/null | grep -c . || true)
# identifies the exact source benchmarked, uncommitted changes included (read-only git use)
TREEHASH=$(cd "$ROOT" && { git diff HEAD 2>/dev/null; git ls-files --others --exclude-standard -z 2>/dev/null | xargs -0 -r cat 2>/dev/null; } | sha256sum | cut -c1-12)

PKI=$WORK/pki
rm -rf "$PKI"
"$SB" certs --dir "$PKI" --host 127.0.0.1 --id agent/bench --id process-server/ps1 --id master-target/mt1 >"$OUT/logs/certs.log"
tlsargs() { echo --ca "$PKI/ca.crt" --cert "$PKI/$1.crt" --key "$PKI/$1.key"; }

# ---------------------------------------------------------------- processes
declare -A PIDS=()
start_bg() { # NAME LOGFILE CMD...
	local name=$1 logf=$2
	shift 2
	"$@" >"$logf" 2>&1 &
	PIDS[$name]=$!
}
stop_bg() { # NAME [SIGNAL]
	local name=$1 sig=${2:-TERM} pid=${PIDS[$1]:-}
	[ -n "$pid" ] || return 0
	kill -s "$sig" "$pid" 2>/dev/null || true
	for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
	kill -s KILL "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
	unset "PIDS[$name]"
}
cleanup() {
	local n
	for n in "${!PIDS[@]}"; do stop_bg "$n"; done
	if [ "$KEEP" = 0 ]; then rm -rf "$WORK"/b1 "$WORK"/b2 "$WORK"/b3 "$WORK"/stage-*; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start_mt() { # DIR TAG
	start_bg mt "$OUT/logs/$2-mt.log" "$SB" ${PROF:+--cpu-profile "$PROF/$2-mt.pprof"} master-target --listen 127.0.0.1:$P_MT --data-dir "$1/mt" --status "$MT_S" $(tlsargs master-target-mt1) ${STANDBY_MT_FLAGS:-}
	"$BU" wait-up "$MT_S"
}
start_ps() { # DIR TAG [COMPRESSION]
	start_bg ps "$OUT/logs/$2-ps.log" "$SB" ${PROF:+--cpu-profile "$PROF/$2-ps.pprof"} process-server --listen 127.0.0.1:$P_PS --cache-dir "$1/ps" --master-target 127.0.0.1:$P_MT \
		--compression "${3:-$COMPRESSION}" --status "$PS_S" $(tlsargs process-server-ps1) ${STANDBY_PS_FLAGS:-}
	"$BU" wait-up "$PS_S"
}
start_agent() { # DIR TAG IMAGE [extra agent flags]
	local dir=$1 tag=$2 img=$3
	shift 3
	start_bg agent "$OUT/logs/$tag-agent.log" "$SB" ${PROF:+--cpu-profile "$PROF/$tag-agent.pprof"} agent --machine bench --state-dir "$dir/agent" --process-server 127.0.0.1:$P_PS \
		--disk "disk0=$img" --nbd "unix:$dir/agent.sock" --status "$AG_S" $(tlsargs agent-bench) "$@" ${STANDBY_AGENT_FLAGS:-}
	"$BU" wait-up "$AG_S"
}
start_monitor() { # TAG [with-agent [monitor flags]]
	local args=(--csv "$OUT/csv/$1.csv")
	[ "${2:-}" = agent ] && args+=(--agent "$AG_S" "${@:3}")
	[ -n "${PIDS[agent]:-}" ] && args+=(--pid "agent=${PIDS[agent]}")
	[ -n "${PIDS[ps]:-}" ] && args+=(--pid "ps=${PIDS[ps]}")
	[ -n "${PIDS[mt]:-}" ] && args+=(--pid "mt=${PIDS[mt]}")
	MON_LOG=$OUT/logs/$1-monitor.log
	start_bg mon "$MON_LOG" "$BU" monitor "${args[@]}"
}
stop_monitor() { # prints the summary line
	stop_bg mon
	tail -1 "$MON_LOG"
}
MEM_AGENT=0 MEM_PS=0 MEM_NOTES=()
note_mem() { # BENCH SUMMARY [info]: info rows do not count toward the target
	local a p m
	a=$(kv "$2" rss_max_kib_agent) p=$(kv "$2" rss_max_kib_ps) m=$(kv "$2" rss_max_kib_mt)
	a=${a:-0} p=${p:-0} m=${m:-0}
	rec "$1" memory agent_rss_max_kib "$a"
	rec "$1" memory ps_rss_max_kib "$p"
	rec "$1" memory mt_rss_max_kib "$m"
	MEM_NOTES+=("| $1${3:+ (not in the target)} | $(calc "$a/1024" 0) MiB | $(calc "$p/1024" 0) MiB | $(calc "$m/1024" 0) MiB |")
	[ -z "${3:-}" ] || return 0
	[ "$a" -gt "$MEM_AGENT" ] && MEM_AGENT=$a
	[ "$p" -gt "$MEM_PS" ] && MEM_PS=$p
	return 0
}
wait_sync() { # [wait-sync flags]; prints its key=value line
	"$BU" wait-sync --agent "$AG_S" --mt "$MT_S" "$@"
}

# ---------------------------------------------------------------- images
# make_ext4 IMG SIZE_MB: an ext4 file system of SIZE_MB filled to about 70 %
# with a copy of parts of /usr (hard-linked into a staging directory, then
# written by mkfs.ext4 -d). The image is sparse where the file system is free.
USR_DU=
usr_sizes() { # "KiB PATH" per candidate, in order of preference; computed once
	if [ -z "$USR_DU" ]; then
		USR_DU=$WORK/usr-du.txt
		local cands=(/usr/lib/x86_64-linux-gnu /usr/share /usr/bin /usr/include /usr/lib/jvm /usr/lib/llvm-14 /usr/sbin /usr/libexec /usr/lib/gcc)
		local d
		for d in /usr/lib/* /usr/*; do
			[ "$d" = /usr/lib ] && continue
			[[ " ${cands[*]} " == *" $d "* ]] || cands+=("$d")
		done
		: >"$USR_DU"
		for d in "${cands[@]}"; do
			[ -e "$d" ] && du -sk "$d" 2>/dev/null | awk -F'\t' '{print $1, $2}' >>"$USR_DU"
		done
	fi
	cat "$USR_DU"
}
# ext4_image SIZE_MB: sets IMG to the cached image of that size, building it
# first if needed (the build is not timed; it reads a few GB of /usr).
ext4_image() {
	IMG=$WORK/images/ext4-$1.img
	if [ -s "$IMG" ] && [ -e "$IMG.ok" ]; then
		log "using cached $IMG ($(($(du -k "$IMG" | cut -f1) / 1024)) MiB allocated; delete it to rebuild)"
		return 0
	fi
	mkdir -p "$WORK/images"
	rm -f "$IMG.ok"
	make_ext4 "$IMG" "$1"
	touch "$IMG.ok"
}
make_ext4() {
	local img=$1 mb=$2 pct stage budget used n
	usr_sizes >/dev/null
	for pct in 70 60 50 40; do
		stage=$WORK/stage-$mb
		rm -rf "$stage"
		mkdir -p "$stage"
		budget=$((mb * 1024 * pct / 100))
		used=0
		local d sz
		while read -r sz d; do
			[ $((used + sz)) -le "$budget" ] || continue
			mkdir -p "$stage$(dirname "$d")"
			if ! cp -al "$d" "$stage$d" 2>/dev/null; then cp -a "$d" "$stage$d"; fi
			used=$((used + sz))
		done <"$USR_DU"
		n=$(find "$stage" | wc -l)
		rm -f "$img"
		truncate -s "${mb}M" "$img"
		if mkfs.ext4 -q -F -m 0 -N $((n * 5 / 4 + 4096)) -d "$stage" "$img" >>"$RUNLOG" 2>&1; then
			rm -rf "$stage"
			log "made $img: ${mb} MiB ext4, $((used / 1024)) MiB of /usr in $n files, $(($(du -k "$img" | cut -f1) / 1024)) MiB allocated"
			return 0
		fi
		log "mkfs.ext4 -d at ${pct}% did not fit, trying less"
	done
	die "could not build $img"
}

# standby_initial DIR IMG TAG COMPRESSION: one timed initial replication,
# sets T (seconds), CPU (CPU-s of the three roles) and CPUS (per role)
standby_initial() {
	local dir=$1 img=$2 tag=$3 comp=$4 s line msum
	rm -rf "$dir/mt" "$dir/ps" "$dir/agent"
	start_mt "$dir" "$tag"
	start_ps "$dir" "$tag" "$comp"
	drop_caches
	s=$(now_ns)
	start_agent "$dir" "$tag" "$img"
	start_monitor "$tag"
	line=$(wait_sync --start "$s" --timeout 25m) || die "initial sync did not finish"
	T=$(kv "$line" elapsed)
	msum=$(stop_monitor)
	note_mem "1.initial-$tag" "$msum"
	log "   $tag standby agent→PS→MT (compression $comp): ${T}s  ($msum)"
	CPUS="agent $(kv "$msum" cpu_s_agent) s, process server $(kv "$msum" cpu_s_ps) s, master target $(kv "$msum" cpu_s_mt) s"
	CPU=$(calc "$(kv "$msum" cpu_s_agent) + $(kv "$msum" cpu_s_ps) + $(kv "$msum" cpu_s_mt)" 2)
	stop_bg agent
	stop_bg ps
	stop_bg mt
	"$SB" verify "$img" "$dir/mt/bench/disk0.img" >>"$RUNLOG" || die "standby replica differs from the source ($tag)"
	rm -rf "$dir/mt" "$dir/ps" "$dir/agent"
}

# ---------------------------------------------------------------- 1: initial copy
B1_ROWS=()
bench_initial() {
	local dir=$WORK/b1 img out best_sb=0 best_qi=0 best_nq=0 best_nf=0 r t line s
	rm -rf "$dir"
	mkdir -p "$dir"
	out=$dir/out.img
	log "== 1. initial replication of a ${INIT_MB} MiB ext4 image ($CACHE_MODE caches)"
	ext4_image "$INIT_MB"
	img=$IMG
	local alloc_mb
	alloc_mb=$(($(du -k "$img" | cut -f1) / 1024))
	rec initial image allocated_mib "$alloc_mb"
	B1_ALLOC=$alloc_mb
	for r in $(seq "$REPEAT_COPY"); do
		# qemu-img convert
		rm -f "$out"
		drop_caches
		timed sh -c "qemu-img convert -f raw -O raw '$img' '$out' && sync '$out'"
		log "   run $r qemu-img convert: ${T}s, ${CPU} CPU-s (load $(loadavg))"
		rec initial qemu-img seconds "$T"
		rec initial qemu-img cpu_s "$CPU"
		if [ "$best_qi" = 0 ] || [ "$(calc "$T < $best_qi" 0)" = 1 ]; then best_qi=$T B1_QI_CPU=$CPU; fi

		# nbdcopy from a qemu-nbd export
		rm -f "$out"
		start_bg qemunbd "$OUT/logs/b1-qemu-nbd.log" qemu-nbd -r -f raw -t -e 8 --socket="$dir/q.sock" -x src "$img"
		for _ in $(seq 50); do [ -S "$dir/q.sock" ] && break; sleep 0.1; done
		drop_caches
		local qcpu0 qcpu1
		qcpu0=$("$BU" cpu "${PIDS[qemunbd]}")
		timed sh -c "nbdcopy 'nbd+unix:///src?socket=$dir/q.sock' '$out' && sync '$out'"
		qcpu1=$("$BU" cpu "${PIDS[qemunbd]}")
		CPU=$(calc "$CPU + $qcpu1 - $qcpu0" 2)
		stop_bg qemunbd
		log "   run $r nbdcopy (qemu-nbd export → file): ${T}s, ${CPU} CPU-s with qemu-nbd's"
		rec initial nbdcopy-nbd seconds "$T"
		rec initial nbdcopy-nbd cpu_s "$CPU"
		if [ "$best_nq" = 0 ] || [ "$(calc "$T < $best_nq" 0)" = 1 ]; then best_nq=$T B1_NQ_CPU=$CPU; fi

		# nbdcopy file to file
		rm -f "$out"
		drop_caches
		timed sh -c "nbdcopy '$img' '$out' && sync '$out'"
		log "   run $r nbdcopy (file → file): ${T}s, ${CPU} CPU-s"
		rec initial nbdcopy-file seconds "$T"
		rec initial nbdcopy-file cpu_s "$CPU"
		if [ "$best_nf" = 0 ] || [ "$(calc "$T < $best_nf" 0)" = 1 ]; then best_nf=$T B1_NF_CPU=$CPU; fi
		rm -f "$out"

		# standby: agent → process server → master target
		standby_initial "$dir" "$img" "b1-r$r" "$COMPRESSION"
		rec initial standby seconds "$T"
		rec initial standby cpu_s "$CPU"
		if [ "$best_sb" = 0 ] || [ "$(calc "$T < $best_sb" 0)" = 1 ]; then best_sb=$T B1_CPU=$CPUS B1_SB_CPU=$CPU; fi
	done
	if [ "$COMPRESSION" != none ]; then
		# the same once without compression, to show what compression costs on a CPU-bound host
		standby_initial "$dir" "$img" "b1-none" none
		rec initial standby-none seconds "$T"
		rec initial standby-none cpu_s "$CPU"
		B1_NONE=$T B1_NONE_CPU=$CPU B1_NONE_CPUS=$CPUS
	fi
	B1_SB=$best_sb B1_QI=$best_qi B1_NQ=$best_nq B1_NF=$best_nf
	rm -rf "$dir"
}

# ---------------------------------------------------------------- 2: intercept overhead
declare -A FIO=()
# STANDBY_FIO_JOBS (environment) picks jobs, e.g. "rand4k-qd32"
# seq1m-qd8-held is seq1m-qd8 through an agent started with --queue-hold 10s:
# writes wait for room in the queue instead of overflowing to the bitmap, so
# what fio reaches is the rate replication sustains, in order (compared with
# qemu-nbd's seq1m-qd8 figure; qemu-nbd is not run again for it).
#
# The -split jobs run the same fio job with the protected machine and the
# replication servers on CPUs of their own, as in any deployment (the
# process server and master target are other machines): fio and the agent,
# or fio and qemu-nbd, on CPU 0; the process server and master target on
# CPU 1 (taskset). The plain jobs share both vCPUs among everything.
SPLIT_JOBS="rand4k-qd1-split rand4k-qd32-split"
[ "$(nproc)" -ge 2 ] || SPLIT_JOBS=""
read -r -a FIO_JOBS <<<"${STANDBY_FIO_JOBS:-rand4k-qd1 rand4k-qd32 seq1m-qd8 seq1m-qd8-held $SPLIT_JOBS}"
HELD_FLAGS=(--queue-hold 10s)
fio_args() { # JOB
	case ${1%-split} in
	rand4k-qd1) echo --rw=randwrite --bs=4k --iodepth=1 ;;
	rand4k-qd32) echo --rw=randwrite --bs=4k --iodepth=32 ;;
	seq1m-qd8 | seq1m-qd8-held) echo --rw=write --bs=1M --iodepth=8 ;;
	esac
}
peer_job() { echo "${1%-held}"; } # JOB: whose qemu-nbd figure it is compared with
is_split() { [ "${1%-split}" != "$1" ]; }
# pin JOB: for a -split job, the protected side on CPU 0 and the servers on
# CPU 1; for any other job, every process on every CPU again. taskset -a
# moves every thread; threads started later inherit their creator's mask.
pin() {
	local all="0-$(($(nproc) - 1))" prot srv n
	prot=$all srv=$all
	if is_split "$1"; then prot=0 srv=1; fi
	for n in agent qemunbd; do [ -n "${PIDS[$n]:-}" ] && taskset -a -p -c "$prot" "${PIDS[$n]}" >/dev/null; done
	for n in ps mt; do [ -n "${PIDS[$n]:-}" ] && taskset -a -p -c "$srv" "${PIDS[$n]}" >/dev/null; done
	FIO_PIN=()
	is_split "$1" && FIO_PIN=(taskset -c "$prot")
	return 0
}
FIO_PIN=()
# procs_cpu ROLE...: CPU seconds the roles' processes have used so far.
procs_cpu() {
	local n t=0
	for n in "$@"; do t=$(calc "$t + $("$BU" cpu "${PIDS[$n]}")" 2); done
	echo "$t"
}
# busy_cpu: CPU seconds the whole machine has spent not idle so far (every
# process and the kernel's own work: fio, interrupts, writeback).
busy_cpu() { awk '/^cpu /{printf "%.2f", ($2+$3+$4+$7+$8+$9)/100; exit}' /proc/stat; }
run_fio() { # NAME URI OUTJSON extra...
	local name=$1 uri=$2 json=$3
	shift 3
	"${FIO_PIN[@]}" fio --name="$name" --ioengine=nbd --uri="$uri" --size="${FIO_MB}M" --output-format=json --output="$json" "$@" >>"$RUNLOG" 2>&1
}
bench_intercept() {
	local dir=$WORK/b2 r job tgt line json msum
	rm -rf "$dir"
	mkdir -p "$dir"
	log "== 2. intercept overhead: fio through the agent's NBD export vs qemu-nbd (${FIO_MB} MiB files of random data, ${FIO_RUNTIME}s per job)"
	dd if=/dev/urandom of="$dir/base.img" bs=1M count="$FIO_MB" status=none
	cp "$dir/base.img" "$dir/q.img"
	cp "$dir/base.img" "$dir/a.img"
	rm -f "$dir/base.img"
	start_bg qemunbd "$OUT/logs/b2-qemu-nbd.log" qemu-nbd -f raw -t --cache=writeback --aio=threads --socket="$dir/q.sock" -x disk0 "$dir/q.img"
	start_mt "$dir" b2
	start_ps "$dir" b2
	start_agent "$dir" b2 "$dir/a.img"
	line=$(wait_sync --timeout 10m) || die "initial sync for benchmark 2 did not finish"
	log "   agent initial sync of the fio file: $(kv "$line" elapsed)s"
	local QURI="nbd+unix:///disk0?socket=$dir/q.sock" AURI="nbd+unix:///disk0?socket=$dir/agent.sock"
	for r in $(seq "$REPEAT_FIO"); do
		for job in "${FIO_JOBS[@]}"; do
			# alternate which goes first, so neither always runs on a warmer machine
			local order="qemu-nbd standby"
			[ $((r % 2)) = 0 ] && order="standby qemu-nbd"
			if [ "$job" != "$(peer_job "$job")" ]; then
				order=standby
				stop_bg agent
				start_agent "$dir" "b2-held-r$r" "$dir/a.img" "${HELD_FLAGS[@]}"
			fi
			pin "$job"
			for tgt in $order; do
				json=$OUT/fio/$job-$tgt-r$r.json
				# Replication of the previous job is applied and every dirty
				# page written back first, for either target: no job runs
				# beside the master target's apply or the kernel's writeback
				# of another.
				wait_sync --timeout 5m >/dev/null || log "   (agent not drained before $job)"
				sync
				local roles=qemunbd c0 b0 c1 b1
				[ "$tgt" = standby ] && roles="agent ps mt"
				local rc0=() rc1=() k n detail=""
				for k in $roles; do rc0+=("$(procs_cpu "$k")"); done
				c0=$(procs_cpu $roles) b0=$(busy_cpu)
				if [ "$tgt" = standby ]; then
					start_monitor "b2-$job-r$r" agent
					run_fio "$job" "$AURI" "$json" $(fio_args "$job") --runtime="$FIO_RUNTIME" --ramp_time="$FIO_RAMP" --time_based
					msum=$(stop_monitor)
					note_mem "2.$job-r$r" "$msum" info
					# The CPU of a job includes the replication of its
					# writes that was still running when fio stopped.
					wait_sync --timeout 5m >/dev/null || log "   (agent not drained after $job)"
				else
					run_fio "$job" "$QURI" "$json" $(fio_args "$job") --runtime="$FIO_RUNTIME" --ramp_time="$FIO_RAMP" --time_based
					msum=
				fi
				c1=$(procs_cpu $roles) b1=$(busy_cpu)
				for k in $roles; do rc1+=("$(procs_cpu "$k")"); done
				line=$("$BU" fio "$json")
				local iops bw ios cpuw busyw
				iops=$(kv "$line" iops) bw=$(kv "$line" bw_bytes)
				# fio counts no I/O of its ramp: the writes of the whole
				# job are estimated at its measured rate.
				ios=$(calc "$iops * ($FIO_RUNTIME + $FIO_RAMP)" 0)
				cpuw=$(calc "($c1 - $c0) * 1e6 / ($ios + 1e-9)" 1) busyw=$(calc "($b1 - $b0) * 1e6 / ($ios + 1e-9)" 1)
				k=0
				for n in $roles; do
					detail+=" cpu_us_per_write_$n=$(calc "(${rc1[$k]} - ${rc0[$k]}) * 1e6 / ($ios + 1e-9)" 1)"
					k=$((k + 1))
				done
				log "   run $r $job $tgt: $line cpu_us_per_write=$cpuw busy_us_per_write=$busyw$detail ${msum:+ | $msum}"
				rec "intercept" "$job-$tgt" iops "$iops"
				rec "intercept" "$job-$tgt" bw_bytes "$bw"
				rec "intercept" "$job-$tgt" lat_mean_us "$(kv "$line" lat_mean_us)"
				rec "intercept" "$job-$tgt" cpu_us_per_write "$cpuw"
				rec "intercept" "$job-$tgt" busy_us_per_write "$busyw"
				if [ -z "${FIO[$job-$tgt-iops]:-}" ] || [ "$(calc "$iops > ${FIO[$job-$tgt-iops]}" 0)" = 1 ]; then
					FIO[$job-$tgt-iops]=$iops FIO[$job-$tgt-bw]=$bw FIO[$job-$tgt-lat]=$(kv "$line" lat_mean_us)
					FIO[$job-$tgt-cpuw]=$cpuw FIO[$job-$tgt-busyw]=$busyw
					[ "$tgt" = standby ] && FIO[$job-mon]=$msum
				fi
			done
			if [ "$job" != "$(peer_job "$job")" ]; then
				wait_sync --timeout 5m >/dev/null || log "   (agent not drained after $job)"
				stop_bg agent
				start_agent "$dir" "b2-r$r" "$dir/a.img"
			fi
		done
	done
	stop_bg qemunbd
	stop_bg agent
	stop_bg ps
	stop_bg mt
	rm -rf "$dir"
}

# ---------------------------------------------------------------- 4: sustained churn
CHURN_ROWS=() CHURN_BEST=0
bench_churn() {
	local dir=$WORK/b4 rate line msum json
	log "== 4. sustained churn: fio randwrite 64k qd8 at fixed rates through the agent, ${CHURN_SECS}s per step, lag sampled every second"
	# a fresh pair, so the memory figures are this benchmark's own
	rm -rf "$dir"
	mkdir -p "$dir"
	dd if=/dev/urandom of="$dir/a.img" bs=1M count="$FIO_MB" status=none
	# what this host can take at all: the same job unthrottled into qemu-nbd
	cp "$dir/a.img" "$dir/q.img"
	start_bg qemunbd "$OUT/logs/b4-qemu-nbd.log" qemu-nbd -f raw -t --cache=writeback --aio=threads --socket="$dir/q.sock" -x disk0 "$dir/q.img"
	for _ in $(seq 50); do [ -S "$dir/q.sock" ] && break; sleep 0.1; done
	run_fio churn-ceiling "nbd+unix:///disk0?socket=$dir/q.sock" "$OUT/fio/churn-qemu-nbd-unthrottled.json" --rw=randwrite --bs=64k --iodepth=8 --runtime="$CHURN_SECS" --time_based
	stop_bg qemunbd
	rm -f "$dir/q.img"
	line=$("$BU" fio "$OUT/fio/churn-qemu-nbd-unthrottled.json")
	CHURN_CEIL=$(calc "$(kv "$line" bw_bytes)/1000000" 1)
	log "   host ceiling: the same job unthrottled into qemu-nbd: ${CHURN_CEIL} MB/s"
	rec churn qemu-nbd-unthrottled achieved_mb_s "$CHURN_CEIL"
	start_mt "$dir" b4
	start_ps "$dir" b4
	start_agent "$dir" b4 "$dir/a.img"
	line=$(wait_sync --timeout 10m) || die "initial sync for benchmark 4 did not finish"
	log "   initial sync of the churn file: $(kv "$line" elapsed)s"
	local AURI="nbd+unix:///disk0?socket=$dir/agent.sock"
	for rate in $CHURN_RATES; do
		wait_sync --timeout 5m >/dev/null || die "agent did not drain before churn step $rate"
		json=$OUT/fio/churn-$rate.json
		start_monitor "b4-churn-$rate" agent --mt "$MT_S"
		run_fio churn "$AURI" "$json" --rw=randwrite --bs=64k --iodepth=8 --rate=$((rate * 1000000)) --runtime="$CHURN_SECS" --time_based
		msum=$(stop_monitor)
		line=$("$BU" fio "$json")
		local bw maxlag mtlag ov bm achieved ok=yes why=
		bw=$(kv "$line" bw_bytes) maxlag=$(kv "$msum" max_lag) mtlag=$(kv "$msum" max_mt_lag) ov=$(kv "$msum" overflows) bm=$(kv "$msum" bitmap_seen)
		achieved=$(calc "$bw/1000000" 1)
		[ "$(calc "$maxlag < $LAG_LIMIT" 0)" = 1 ] || { ok=no; why+=" lag ${maxlag}s"; }
		# The replica too: a master target whose apply falls behind keeps
		# the agent's lag low (the intake has the writes) while the newest
		# recovery point ages without bound.
		[ "$(calc "$mtlag < $LAG_LIMIT" 0)" = 1 ] || { ok=no; why+=" replica lag ${mtlag}s"; }
		[ "$ov" = 0 ] && [ "$bm" = false ] || { ok=no; why+=" queue overflowed to bitmap"; }
		[ "$(calc "$bw >= 0.95 * $rate * 1000000" 0)" = 1 ] || { ok=no; why+=" fio reached only ${achieved} MB/s"; }
		note_mem "4.churn-$rate" "$msum"
		log "   $rate MB/s: achieved ${achieved} MB/s, max lag ${maxlag}s, median lag $(kv "$msum" median_lag)s, replica (master target apply) lag max ${mtlag}s median $(kv "$msum" median_mt_lag)s, overflows $ov → $ok$why"
		rec churn "rate-$rate" achieved_mb_s "$achieved"
		rec churn "rate-$rate" max_lag_s "$maxlag"
		rec churn "rate-$rate" max_replica_lag_s "$mtlag"
		rec churn "rate-$rate" pass "$ok"
		CHURN_ROWS+=("| $rate | $achieved | $maxlag | $(kv "$msum" median_lag) | $mtlag | $ov | $ok${why:+ ($why )} |")
		if [ "$ok" = yes ]; then CHURN_BEST=$rate; else break; fi
	done
	line=$(wait_sync --timeout 10m) || die "agent did not drain after churn"
	stop_bg agent
	stop_bg ps
	stop_bg mt
	"$SB" verify "$dir/a.img" "$dir/mt/bench/disk0.img" >>"$RUNLOG" || die "replica differs after churn"
	rec churn final verified 1
	rm -rf "$dir"
}

# ---------------------------------------------------------------- 3: catch-up after an outage
bench_catchup() {
	local dir=$WORK/b3 img line msum s t nblocks nchg
	rm -rf "$dir"
	mkdir -p "$dir"
	img=$dir/src.img
	log "== 3. catching up after an outage: ${CATCH_MB} MiB ext4 image, ${CHANGE_PCT}% of 4 KiB blocks changed while the process server is down"
	ext4_image "$CATCH_MB"
	cp --sparse=always "$IMG" "$img"
	start_mt "$dir" b3
	start_ps "$dir" b3
	start_agent "$dir" b3 "$img" --queue-bytes "$CATCH_QUEUE"
	start_monitor b3-initial
	line=$(wait_sync --timeout 20m) || die "initial sync for benchmark 3 did not finish"
	note_mem "3.catchup-initial" "$(stop_monitor)"
	log "   initial sync: $(kv "$line" elapsed)s"
	# the replica's state, for rsync's old side (two copies: one per block size)
	cp --sparse=always "$img" "$dir/old1.img"
	cp --sparse=always "$img" "$dir/old2.img"

	log "   link down: kill -9 of the process server"
	stop_bg ps KILL
	nblocks=$((CATCH_MB * 256))
	nchg=$((nblocks * CHANGE_PCT / 100))
	start_monitor b3-outage agent
	fio --name=change --ioengine=nbd --uri="nbd+unix:///disk0?socket=$dir/agent.sock" --rw=randwrite --bs=4k --iodepth=16 \
		--number_ios="$nchg" --refill_buffers --size="${CATCH_MB}M" --output-format=json --output="$OUT/fio/catchup-change.json" >>"$RUNLOG" 2>&1
	msum=$(stop_monitor)
	line=$("$BU" agent "$AG_S")
	log "   changed $nchg random 4 KiB blocks ($((nchg * 4 / 1024)) MiB) through the agent: $line"
	[ "$(kv "$line" bitmap_mode)" = true ] || [ "$(kv "$line" overflows)" != 0 ] || log "   WARNING: the queue did not overflow to the bitmap"
	rec catchup change blocks "$nchg"
	rec catchup change overflows "$(kv "$line" overflows)"
	cp --sparse=always "$img" "$dir/changed.img"

	drop_caches
	s=$(now_ns)
	start_ps "$dir" b3-restart
	start_monitor b3-catchup agent --interval 250ms
	line=$(wait_sync --start "$s" --timeout 20m) || die "catch-up did not finish"
	msum=$(stop_monitor)
	note_mem "3.catchup" "$msum"
	B3_SB=$(kv "$line" elapsed) B3_CONN=$(kv "$line" connected_at)
	log "   standby catch-up: ${B3_SB}s from process server restart (agent reconnected at ${B3_CONN}s)  ($msum)"
	B3_CPU="agent $(kv "$msum" cpu_s_agent) s, process server $(kv "$msum" cpu_s_ps) s, master target $(kv "$msum" cpu_s_mt) s"
	B3_SB_CPU=$(calc "$(kv "$msum" cpu_s_agent) + $(kv "$msum" cpu_s_ps) + $(kv "$msum" cpu_s_mt)" 2)
	rec catchup standby seconds "$B3_SB"
	rec catchup standby reconnect_s "$B3_CONN"
	stop_bg agent
	stop_bg ps
	stop_bg mt
	"$SB" verify "$img" "$dir/mt/bench/disk0.img" >>"$RUNLOG" || die "standby replica differs after catch-up"
	rec catchup standby verified 1

	drop_caches
	timed sh -c "rsync --inplace --no-whole-file '$dir/changed.img' '$dir/old1.img' && sync '$dir/old1.img'"
	B3_RS=$T B3_RS_CPU=$CPU
	log "   rsync --inplace --no-whole-file (default block size): ${B3_RS}s, ${CPU} CPU-s"
	rec catchup rsync-default seconds "$B3_RS"
	rec catchup rsync-default cpu_s "$CPU"
	drop_caches
	timed sh -c "rsync --inplace --no-whole-file -B 4096 '$dir/changed.img' '$dir/old2.img' && sync '$dir/old2.img'"
	B3_RS4=$T B3_RS4_CPU=$CPU
	log "   rsync --inplace --no-whole-file -B 4096: ${B3_RS4}s, ${CPU} CPU-s"
	rec catchup rsync-B4096 seconds "$B3_RS4"
	rec catchup rsync-B4096 cpu_s "$CPU"
	cmp -s "$dir/changed.img" "$dir/old1.img" && cmp -s "$dir/changed.img" "$dir/old2.img" || die "rsync result differs"
	rm -rf "$dir"
}

# ---------------------------------------------------------------- Go benchmarks
bench_go() {
	log "== Go benchmarks (go test -bench=. -benchtime=$GOBENCHTIME ./internal/...)"
	(cd "$ROOT" && go test -run='^$' -bench=. -benchtime="$GOBENCHTIME" -benchmem -count=1 ./internal/... >"$OUT/logs/gobench.log" 2>&1) || log "   go test -bench failed (see logs/gobench.log)"
	grep -E '^(Benchmark|ok|FAIL|---)' "$OUT/logs/gobench.log" | grep -v 'no test files' >"$OUT/gobench.txt" || true
	grep -E '^Benchmark' "$OUT/gobench.txt" | tee -a "$RUNLOG" >&2 || true
}

# ---------------------------------------------------------------- run
START_NS=$(now_ns)
log "standby benchmarks: $( [ "$QUICK" = 1 ] && echo quick || echo full ), revision $GITREV ($GITDIRTY changed files), out $OUT, work $WORK, load $(loadavg)"
# build missing images first, back to back, so the second build finds most
# of /usr still in the page cache
if want initial; then ext4_image "$INIT_MB"; fi
if want catchup; then ext4_image "$CATCH_MB"; fi
drop_caches
LOADS=()
phase() {
	LOADS+=("$1 $(loadavg)")
	log "-- $1 done after $(calc "$(secs_since "$START_NS")/60" 1) min, load average $(loadavg)"
}
if want initial; then bench_initial; phase initial; fi
if want intercept; then bench_intercept; phase intercept; fi
if want churn; then bench_churn; phase churn; fi
if want catchup; then bench_catchup; phase catchup; fi
if want go; then bench_go; fi
TOTAL=$(secs_since "$START_NS")

# ---------------------------------------------------------------- report
ratio() { calc "$1" 2; }
verdict() { [ "$(calc "$1" 0)" = 1 ] && echo met || echo MISSED; }
RES=$OUT/results.md
{
	echo "# standby benchmark results"
	echo
	echo "$(date -u +%Y-%m-%dT%H:%M:%SZ), $( [ "$QUICK" = 1 ] && echo '`--quick`' || echo 'full run'), revision $GITREV ($GITDIRTY files changed in the working tree, tree hash $TREEHASH), $(nproc) CPUs, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), load average at the end $(loadavg). Took $(calc "$TOTAL/60" 1) min. Copy benchmarks ran with **$CACHE_MODE** page caches; compression $COMPRESSION; best of $REPEAT_COPY for benchmark 1 and of $REPEAT_FIO for benchmark 2."
	echo
	echo "| # | benchmark | standby | peer | ratio | target | verdict |"
	echo "|---|---|---|---|---|---|---|"
	if want initial; then
		local_mb=$INIT_MB
		for p in "qemu-img convert:$B1_QI:$B1_QI_CPU" "nbdcopy qemu-nbd→file:$B1_NQ:$B1_NQ_CPU" "nbdcopy file→file:$B1_NF:$B1_NF_CPU"; do
			IFS=: read -r name pt pcpu <<<"$p"
			echo "| 1 | initial copy ${local_mb} MiB (${B1_ALLOC} MiB allocated, $(calc "$B1_ALLOC/$local_mb*100" 0) % data) vs $name | ${B1_SB} s ($(calc "$local_mb/$B1_SB" 0) MiB/s, ${B1_SB_CPU} CPU-s) | ${pt} s ($(calc "$local_mb/$pt" 0) MiB/s, ${pcpu} CPU-s) | $(ratio "$pt/$B1_SB")× | ≥ 0.8× | $(verdict "$pt/$B1_SB >= 0.8") |"
		done
	fi
	if want intercept; then
		for job in "${FIO_JOBS[@]}"; do
			pj=$(peer_job "$job")
			a=${FIO[$job-standby-iops]:-0} q=${FIO[$pj-qemu-nbd-iops]:-0}
			ab=${FIO[$job-standby-bw]:-0} qb=${FIO[$pj-qemu-nbd-bw]:-0}
			m=${FIO[$job-mon]:-} v=$(verdict "$a/($q+1e-9) >= 0.8")
			# A job during which the agent fell back to its bitmap measured
			# writes that were not being replicated: not a comparison.
			if [ -n "$m" ] && { [ "$(kv "$m" bitmap_seen)" = true ] || [ "$(kv "$m" overflows)" != 0 ]; }; then
				v="MISSED (replication fell back to the bitmap: not comparable)"
			fi
			what="fio $job"
			[ "$pj" != "$job" ] && what="fio $pj, agent ${HELD_FLAGS[*]} (writes wait for replication)"
			is_split "$job" && what="fio ${job%-split}, protected side (fio + agent, fio + qemu-nbd) on CPU 0, process server + master target on CPU 1"
			echo "| 2 | $what | $(calc "$a" 0) IOPS, $(calc "$ab/1048576" 1) MiB/s | $(calc "$q" 0) IOPS, $(calc "$qb/1048576" 1) MiB/s (qemu-nbd) | $(ratio "$a/($q+1e-9)")× | ≥ 0.8× | $v |"
		done
	fi
	if want catchup; then
		echo "| 3 | catch-up, ${CHANGE_PCT}% of ${CATCH_MB} MiB changed, vs rsync -B 4096 | ${B3_SB} s (${B3_SB_CPU} CPU-s) | ${B3_RS4} s (${B3_RS4_CPU} CPU-s) | $(ratio "$B3_SB/$B3_RS4")× of rsync's time | ≤ 0.5× | $(verdict "$B3_SB/$B3_RS4 <= 0.5") |"
		echo "| 3 | same, vs rsync default block size | ${B3_SB} s | ${B3_RS} s (${B3_RS_CPU} CPU-s) | $(ratio "$B3_SB/$B3_RS")× of rsync's time | (info) | |"
	fi
	if want churn; then
		echo "| 4 | sustained churn, highest rate with lag < ${LAG_LIMIT} s (agent and replica) | ${CHURN_BEST} MB/s | qemu-nbd unthrottled: ${CHURN_CEIL:-?} MB/s | | ≥ 100 MB/s | $(verdict "$CHURN_BEST >= 100") |"
	fi
	if [ "${#MEM_NOTES[@]}" -gt 0 ]; then
		echo "| 5 | memory, max RSS in 1, 3, 4 | agent $(calc "$MEM_AGENT/1024" 0) MiB, process server $(calc "$MEM_PS/1024" 0) MiB | | | ≤ 256 MiB | $(verdict "$MEM_AGENT <= 262144 && $MEM_PS <= 262144") |"
	fi
	echo
	if want initial; then
		echo "## 1. Initial copy"
		echo
		echo "Best of $REPEAT_COPY; time from starting the agent (process server and master target already running) until the agent reports every disk replicating and drained and the master target has applied and checkpointed everything; the replica is then compared with \`standby verify\`. Peers are timed until their output file is fsynced (\`sync FILE\`). CPU time of the standby roles in the best run: ${B1_CPU:-n/a}."
		[ -n "${B1_NONE:-}" ] && echo "The same with \`--compression none\` (one run): ${B1_NONE} s ($(calc "$INIT_MB/$B1_NONE" 0) MiB/s), CPU ${B1_NONE_CPUS}."
		echo
	fi
	if want catchup; then
		echo "## 3. Catch-up"
		echo
		echo "Agent reconnected ${B3_CONN} s after the process server was restarted (reconnect backoff), the rest is the resync. CPU time: ${B3_CPU:-n/a}."
		echo
	fi
	if want intercept; then
		echo "## 2. Intercept overhead (best of $REPEAT_FIO)"
		echo
		echo "CPU per write: the CPU time of the export's processes (qemu-nbd; the agent, process server and master target, until the job's writes were applied) and of the whole machine (fio, the kernel and everything else included, from /proc/stat) during the job, divided by its writes (fio's rate × its ${FIO_RUNTIME} s + ${FIO_RAMP} s ramp). On CPUs that a job keeps busy, the ratio of the whole machine's figures is what bounds the ratio of the rates."
		echo
		echo "| job | qemu-nbd IOPS | standby IOPS | ratio | qemu-nbd mean lat | standby mean lat | CPU µs per write, qemu-nbd: export / machine | standby: roles / machine | standby replication during the job |"
		echo "|---|---|---|---|---|---|---|---|---|"
		for job in "${FIO_JOBS[@]}"; do
			m=${FIO[$job-mon]:-} pj=$(peer_job "$job")
			echo "| $job | $(calc "${FIO[$pj-qemu-nbd-iops]:-0}" 0) | $(calc "${FIO[$job-standby-iops]:-0}" 0) | $(ratio "${FIO[$job-standby-iops]:-0}/(${FIO[$pj-qemu-nbd-iops]:-0}+1e-9)")× | ${FIO[$pj-qemu-nbd-lat]:-} µs | ${FIO[$job-standby-lat]:-} µs | ${FIO[$pj-qemu-nbd-cpuw]:-} / ${FIO[$pj-qemu-nbd-busyw]:-} | ${FIO[$job-standby-cpuw]:-} / ${FIO[$job-standby-busyw]:-} | max lag $(kv "$m" max_lag) s, overflows $(kv "$m" overflows), bitmap mode seen $(kv "$m" bitmap_seen) |"
		done
		echo
	fi
	if want churn; then
		echo "## 4. Sustained churn (fio randwrite 64 KiB, iodepth 8, ${CHURN_SECS} s per step)"
		echo
		echo "A step passes when fio reaches 95 % of the rate, the agent's lag_seconds (age of the oldest write not yet durable at the master target) stays under ${LAG_LIMIT} s in every one-second sample, so does the replica's (the master target's lag_seconds: age of the newest epoch applied to the replica, sampled from the fourth second on), and the queue never overflows to the dirty bitmap (in bitmap mode lag_seconds no longer measures anything). The same job unthrottled into qemu-nbd reached ${CHURN_CEIL:-?} MB/s on this host during this run: that bounds what any step can reach."
		echo
		echo "| target MB/s | achieved MB/s | max lag s | median lag s | max replica lag s | queue overflows | pass |"
		echo "|---|---|---|---|---|---|---|"
		printf '%s\n' "${CHURN_ROWS[@]}"
		echo
	fi
	if [ "${#MEM_NOTES[@]}" -gt 0 ]; then
		echo "## 5. Memory (max VmRSS sampled every second)"
		echo
		echo "| phase | agent | process server | master target |"
		echo "|---|---|---|---|"
		printf '%s\n' "${MEM_NOTES[@]}"
		echo
	fi
	if want go && [ -s "$OUT/gobench.txt" ]; then
		echo "## Go benchmarks (-benchtime=$GOBENCHTIME)"
		echo
		echo '```'
		cat "$OUT/gobench.txt"
		echo '```'
		echo
	fi
	echo "Load average (1, 5, 15 min) at the end of each benchmark: $(printf '%s; ' "${LOADS[@]}")"
	echo
	echo "Raw figures of every run: results.tsv; timeline: run.log; per-second samples: csv/; fio JSON: fio/; role logs: logs/."
} >"$RES"
log "done in $(calc "$TOTAL/60" 1) min; results in $RES"
cat "$RES"
