# Shared by the whole-run benchmark scripts (bench_memory.sh, bench_flux_memory.sh,
# bench_sdcpp.sh): the host line every table carries, and the figures read from a run's log.
# Source it; it defines functions only.

# "CPU model, N threads, avx512f | no AVX-512"
bench_host() {
  echo "$(lscpu | sed -n 's/^Model name: *//p'), $(nproc) threads, $(grep -m1 -o 'avx512f' /proc/cpuinfo || echo 'no AVX-512')"
}

# Peak resident memory of a `/usr/bin/time -v` log, as "12.34 GiB"
bench_peak() {
  printf '%.2f GiB' "$(echo "$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$1") / 1048576" | bc -l)"
}

# A stage's seconds from `sada generate`'s "time: loading 1.2 s, text encoding ..." line:
# bench_stage LOG loading|'text encoding'|sampling|decoding
bench_stage() {
  sed -n 's/^time: //p' "$1" | sed -n "s/.*$2 \([0-9.]*\) s.*/\1/p"
}
