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
# Not part of `make check`. Takes a few minutes at the default sizes
# (100, 1,000, 5,000 nodes); 10,000 nodes needs ~50 GB of memory (every core
# keeps the full member table, N^2 records in one process), so it is not in
# the defaults.
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
set terminal pngcairo size 1400,1000 font ",10"
set output "$out/sim.png"
set multiplot layout 2,2 title "pmgcm gossip core in the deterministic simulator (defaults: probe 0.4 s, gossip 0.2 s)"
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
     "" u 1:7 w l dt 3 t "core formula 1.58T+T+S_min", \
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
plot "$out/sim_scale.dat" u 1:12 w lp pt 7 t "UDP bytes/s", \
     "" u 1:13 w lp pt 5 t "UDP+TCP (push-pull) bytes/s", \
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
     "" u 1:3 w lp pt 5 t "suspect views"
unset multiplot
GP
echo "bench/sim.sh: plot in $out/sim.png"
