"""Loss curve of the default model's training log: tools/plot_training.py LOG.csv OUT.png"""

import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

rows = list(csv.DictReader(open(sys.argv[1])))
steps = [int(r["step"]) for r in rows]
loss = [float(r["loss"]) for r in rows]
fig, ax = plt.subplots(figsize=(7, 3.5), dpi=110)
ax.plot(steps, loss, lw=1.2)
ax.set_yscale("log")
ax.set_xlabel("step (batch 32)")
ax.set_ylabel("v-prediction MSE (mean of 50 steps)")
ax.set_title(f"sada-shapes-32 training, {rows[-1]['seconds']} s on 2 CPU cores")
ax.grid(True, which="both", alpha=0.3)
fig.tight_layout()
fig.savefig(sys.argv[2])
