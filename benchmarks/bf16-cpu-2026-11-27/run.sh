set -u
for seed in 1 2; do for p in f32 bf16; do
  d=/tmp/exp/s$seed-$p; rm -rf $d
  /usr/bin/time -f "%e s wall" /tmp/exp/resnet train --dataset cifar10 --data /work/shared/data/cifar-10-batches-bin --width 16 --batch-size 128 --epochs 6 --train-limit 25000 --lr 0.1 --seed $seed --conv-precision $p --out $d --json > $d.json 2> $d.log
  echo "$seed $p rc=$? $(tail -1 $d.log)" >> /tmp/exp/done.txt
done; done
