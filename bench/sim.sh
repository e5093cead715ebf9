#!/usr/bin/env bash
# bench/sim.sh - the gossip core at scale in the simulator: runs
# bench/simbench (see its header for what it measures), keeps its table in
# bench/out/sim.txt and plots bench/out/sim.png (gnuplot; Debian's
# gnuplot-nox is installed if missing).
#
#   bench/sim.sh [simbench options, e.g. --sizes 100,1000 --loss-minutes 10]
#   bench/sim.sh --plot-only     (re-plot bench/out/sim_*.dat)
#
# Needs a built tree: $PMGCM_BUILD (default build/) with bench/simbench.
# Not part of `make check`. About 10 minutes of CPU at the default sizes
# (100, 1,000, 5,000 nodes; forming 5,000 takes ~3 of them). N = 10,000
# (--sizes 100,1000,5000,10000) adds ~30 minutes and peaks around 14 GB
# (N^2 member records in one process, ~100 bytes each; see the "Forming
# the cluster, and memory" table), so it is not in the defaults.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
build=${PMGCM_BUILD:-$top/build}
bin=$build/bench/simbench
out=$top/bench/out
mkdir -p "$out"
if [[ ${1:-} == --plot-only ]]; then
    [[ -f $out/sim_scale.dat && -f $out/sim_loss.dat ]] ||
        { echo "bench/sim.sh: no data in $out: run without --plot-only" >&2; exit 1; }
else
    if [[ ! -x $bin ]]; then
        echo "bench/sim.sh: missing $bin: build first (or set PMGCM_BUILD)" >&2
        exit 1
    fi
    "$bin" --out "$out" "$@" | tee "$out/sim.txt"
fi

if ! command -v gnuplot >/dev/null; then
    echo "bench/sim.sh: installing gnuplot-nox for the plot" >&2
    if ! { apt-get install -y -q gnuplot-nox >/dev/null 2>&1 ||
           { apt-get update -q >/dev/null 2>&1 &&
             apt-get install -y -q gnuplot-nox >/dev/null 2>&1; }; }; then
        echo "bench/sim.sh: no gnuplot; table only" >&2
        exit 0
    fi
fi
gnuplot <<GP
set terminal pngcairo size 1400,1400 font ",10"
set output "$out/sim.png"
set multiplot layout 3,2 title "pmgcm gossip core in the deterministic simulator (defaults: probe 0.6 s quiet / 0.2 s after a failure, gossip 0.2 s)"
set logscale x
set grid
set key top left
set xlabel "nodes N"

set title "Crash detection (median)"
set ylabel "seconds"
plot "$out/sim_scale.dat" u 1:2 w lp pt 7 t "first suspect", \
     "" u 1:6 w l dt 2 t "SWIM e/(e-1) periods", \
     "" u 1:3 w lp pt 5 t "first dead", \
     "" u 1:4 w lp pt 9 t "dead everywhere", \
     "" u 1:5 w lp pt 8 t "dead everywhere, worst crash", \
     "" u 1:7 w l dt 3 t "core formula Tq/2+T+S_min (every member probed every period)", \
     "" u 1:8 w l dt 4 t "memberlist formula (1 s probe, mult 4)"

set title "Broadcast: gossip periods (0.2 s) until every node has it"
set ylabel "periods"
plot "$out/sim_scale.dat" u 1:9 w lp pt 7 t "median", \
     "" u 1:10 w lp pt 6 t "max", \
     "" u 1:11 w l dt 2 t "log2 N", \
     "" u 1:(2.5*\$11) w l dt 3 t "2.5 log2 N (target)"

set title "Cost per node"
set ylabel "bytes sent per node per second"
set y2label "real CPU us per simulated node-second"
set y2tics
set ytics nomirror
set yrange [0:*]
set y2range [0:*]
stats "$out/sim_scale.dat" u 13 every ::0::0 nooutput
base = STATS_min
plot "$out/sim_scale.dat" u 1:12 w lp pt 7 t "UDP bytes/s", \
     "" u 1:13 w lp pt 5 t "UDP+TCP (push-pull by digest) bytes/s", \
     1.5*base w l dt 3 t "1.5x the smallest N (target at N=5000)", \
     "" u 1:14 axes x1y2 w lp pt 9 t "CPU us per node-s (right)"
unset y2tics
unset y2label
set ytics mirror

set title "False deaths and suspicions of live nodes vs random loss"
unset logscale x
set xlabel "packet loss %"
set ylabel "per node-hour"
set logscale y
set yrange [0.0001:*]
plot "$out/sim_loss.dat" u 1:(\$2>0?\$2:0.0001) w lp pt 7 t "false deaths (0 plotted at 1e-4)", \
     "" u 1:3 w lp pt 5 t "suspect views", \
     1402 w l dt 2 t "suspect views at 10% before (1,402)", \
     1402/5 w l dt 3 t "target at 10% (1/5)"
unset logscale y
set yrange [0:*]

set title "Forming the cluster (a join every 2 ms; 10 ms above 5,000)"
set logscale x
set xlabel "nodes N"
set ylabel "seconds"
set y2label "peak memory, GB"
set y2tics
set ytics nomirror
plot "$out/sim_scale.dat" u 1:16 w lp pt 7 t "real s until all see all", \
     "" u 1:17 w lp pt 5 t "CPU s", \
     300 w l dt 3 t "5 minutes (target at N=5,000)", \
     "" u 1:(\$18/1024) axes x1y2 w lp pt 9 t "peak GB (right; 24 GB target at N=10,000)"
unset y2tics
unset y2label
set ytics mirror
unset multiplot
GP
echo "bench/sim.sh: plot in $out/sim.png"
