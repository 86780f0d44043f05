#!/usr/bin/env bash
# usage: ab.sh ROUNDS "bench args" BIN_A BIN_B  (env A_ENV / B_ENV optional)
R=$1; ARGS=$2; A=$3; B=$4
for i in $(seq $R); do
  for x in A B; do
    if [ $x = A ]; then bin=$A; e=${A_ENV:-}; else bin=$B; e=${B_ENV:-}; fi
    env $e $bin bench $ARGS --json 2>/dev/null | python3 -c "import json,sys; d=json.loads(sys.stdin.read()); print('$x', round(d['images_per_sec'],1), 'min', round(d['min_step_s'],3), 'med', round(d['median_step_s'],3))"
  done
done
