# %% [markdown]
# # Exact hypergradients through 1,000 training steps
#
# MAML differentiates through a few inner steps. The same machinery differentiates
# through a whole training run: the "inner loop" is now an ordinary training of a
# network by SGD, and the outer loop learns something that shapes that training. We do
# two classic problems of this kind on `sklearn.datasets.load_digits` (1,797 handwritten
# digits of 8×8 pixels), with a small MLP (64 → 32 → 10):
#
# 1. **A learned learning-rate schedule** (in the spirit of Maclaurin, Duvenaud & Adams
#    2015): one learnable learning rate per block of 50 steps of a 1,000-step SGD run,
#    trained by the gradient of the validation loss at the end of the run.
# 2. **Dataset distillation** (Wang, Zhu, Torralba & Efros 2018): 10 learnable synthetic
#    images, one per class, such that a *freshly initialised* network trained on them
#    alone classifies real digits well. Here the hypergradient flows into the *batches*
#    of the inner loop.
#
# The hypergradients are exact (not truncated, not first-order). Keeping every step's
# graph, as a naive unroll does, costs memory in proportion to the number of steps; the
# checkpointed engine with a binomial schedule (`schedule="binomial:20"`: at most 20
# stored states, the Revolve schedule) keeps the memory flat and recomputes steps
# instead. We measure both, and check that both give the same hypergradient.
#
# **About the stored outputs.** They come from a full run by
# `python notebooks/build.py --execute` on a CPU (the next cell prints the machine).
# Long-horizon hypergradients are known to be chaotic (small changes of a learning rate
# change the end of a long run a lot); we clip the hypergradient and cap the learning
# rates, and we judge every learned quantity on initialisations and batch orders that
# training never saw.


# %%
import math
import os
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from IPython.display import Markdown, display

import memmaml
from memmaml.bench import quick_mode
from memmaml.models import mlp

try:
    from sklearn.datasets import load_digits
except ImportError:
    raise ImportError("this notebook needs scikit-learn: pip install -e '.[examples]'") from None

QUICK = quick_mode()  # MEMMAML_NOTEBOOK_QUICK=1 (the test suite): every cell runs, on much smaller sizes
NOTEBOOK_START = time.perf_counter()

SLOTS = 5 if QUICK else 20                   # stored states of the binomial schedule
SCHEDULE = f"binomial:{SLOTS}"
# -- 1. learned learning-rate schedule
T = 60 if QUICK else 1000                    # SGD steps of one training run
EVERY = 10 if QUICK else 50                  # steps per learnable learning rate
BATCH = 64                                   # training digits per SGD step
LR_GRID = [0.2, 1.0] if QUICK else [0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5]
GRID_SEEDS = 2 if QUICK else 3               # (initialisation, batch order) pairs per grid point
OUTER_STEPS = 2 if QUICK else 30             # Adam steps on the log learning rates
PAIRS = 1 if QUICK else 2                    # (initialisation, batch order) pairs averaged per outer step
OUTER_LR = 0.1                               # Adam, on log learning rates
HG_CLIP = 0.1                                # hypergradient norm clip
EVAL_SEEDS = 3 if QUICK else 10              # held-out pairs for the final comparison
# -- 2. dataset distillation
T_DISTILL = 20 if QUICK else 200             # SGD steps on the 10 synthetic images
DISTILL_STEPS = 5 if QUICK else 200          # Adam steps on the images and the learning rate
DISTILL_BATCH = 256                          # real training digits in the outer loss
IMAGE_LR, DISTILL_LR_LR = 0.03, 0.02         # Adam step sizes: images, log learning rate
DISTILL_EVAL_SEEDS = 5 if QUICK else 10      # fresh initialisations for the final comparison
# -- 3. memory and exactness
MEMORY_T_SHORT = T // 10                     # binomial peak at T/10 against T
CHECK_T = 30                                 # unroll length of the naive-vs-binomial check

# seeds of initialisations and batch orders: disjoint ranges for tuning, training and evaluation
GRID_BASE, TRAIN_BASE, HELD_OUT_BASE = 100, 1_000, 50_000

print(f"quick mode: {QUICK}; T = {T} steps ({T // EVERY} learnable learning rates), {OUTER_STEPS} outer steps; "
      f"distillation: {T_DISTILL} steps, {DISTILL_STEPS} outer steps")
print(f"device: cpu ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads), "
      f"cuda available: {torch.cuda.is_available()}; torch {torch.__version__}")


# %% [markdown]
# ## Data and the training run
#
# The 1,797 digits are split once, by a fixed permutation, into 1,000 training, 397
# validation and 400 test digits; pixels are scaled to [0, 1]. A *training run* is
# named by a seed: the seed fixes the network's initialisation and the order of its
# minibatches (64 random training digits per step). `memmaml.MAML` runs one SGD step
# per batch in the list it is given; its `Result.model` is the trained network, still
# differentiable with respect to everything that shaped it.


# %%
digits_x, digits_y = load_digits(return_X_y=True)
digits_x = torch.tensor(digits_x / 16.0, dtype=torch.float32)
digits_y = torch.tensor(digits_y)
permutation = torch.randperm(len(digits_y), generator=torch.Generator().manual_seed(0))
train_set = (digits_x[permutation[:1000]], digits_y[permutation[:1000]])
val_set = (digits_x[permutation[1000:1397]], digits_y[permutation[1000:1397]])
test_set = (digits_x[permutation[1397:]], digits_y[permutation[1397:]])


def cross_entropy(model, batch):
    inputs, labels = batch
    return F.cross_entropy(model(inputs), labels)


def accuracy(model, batch):
    with torch.no_grad():
        return (model(batch[0]).argmax(1) == batch[1]).float().mean().item()


def fresh_network(seed):
    torch.manual_seed(seed)
    return mlp([64, 32, 10])


def minibatches(seed, steps, batch_size=BATCH):
    generator = torch.Generator().manual_seed(seed)
    return [tuple(t[idx] for t in train_set)
            for idx in (torch.randint(0, len(train_set[1]), (batch_size,), generator=generator) for _ in range(steps))]


def train_run(learning_rates, seed, steps=T):
    """Train a fresh network (seed) for `steps` SGD steps; learning_rates: one per block of EVERY steps."""
    network = fresh_network(seed)
    schedule = memmaml.SGD(memmaml.PerStep(torch.as_tensor(learning_rates, dtype=torch.float32), every=EVERY))
    with torch.no_grad():
        return memmaml.MAML(network, cross_entropy, schedule)(minibatches(seed, steps)).model


print(f"train {len(train_set[1])}, validation {len(val_set[1])}, test {len(test_set[1])} digits of {digits_x.shape[1]} "
      f"pixels")


# %% [markdown]
# ## 1. A learned learning-rate schedule
#
# ### The baseline: the best constant learning rate
#
# A grid of constant learning rates, each tried on a few training runs; the best is the
# one with the lowest mean validation loss after $T$ steps. The grid also tells where
# training stops being stable: `LR_CAP`, the largest learning rate of the grid whose
# runs end with less than twice the best validation loss, caps the learned schedule.


# %%
start = time.perf_counter()
blocks = T // EVERY
grid = {lr: [cross_entropy(train_run([lr] * blocks, GRID_BASE + s), val_set).item() for s in range(GRID_SEEDS)]
        for lr in LR_GRID}
for lr, losses in grid.items():
    print(f"lr {lr:>4}: validation loss {np.mean(losses):.4f} (runs: {', '.join(f'{v:.3f}' for v in losses)})")
BEST_LR = min(grid, key=lambda lr: np.mean(grid[lr]))
LR_CAP = max(lr for lr in LR_GRID if np.mean(grid[lr]) < 2 * np.mean(grid[BEST_LR]))
print(f"best constant learning rate: {BEST_LR}; cap of the learned ones: {LR_CAP} "
      f"({time.perf_counter() - start:.0f} s)")


# %% [markdown]
# ### Learning the schedule
#
# One learnable log learning rate per block of 50 steps, all starting at the best
# constant. `memmaml.PerStep(log_lr.exp(), every=EVERY)` hands step $i$ the entry
# $\lfloor i / 50 \rfloor$; the engine differentiates the validation loss at the end of
# the run with respect to every entry, through all $T$ steps. Each outer step averages
# the hypergradient over `PAIRS` fresh training runs (new initialisations and batch
# orders every time), clips its norm to `HG_CLIP` and takes an Adam step (a step whose
# hypergradient is not finite is skipped); the learning rates are then capped at
# `LR_CAP`. Both guards matter: long-horizon hypergradients are chaotic near the edge of
# stability. A schedule allowed above the largest stable constant drifts into the region
# where training diverges, where hypergradients are huge or not finite, and a single
# unclipped one throws the schedule far off.


# %%
log_lr = torch.full((blocks,), math.log(BEST_LR), requires_grad=True)
outer_optimizer = torch.optim.Adam([log_lr], lr=OUTER_LR)
outer_losses, hypergradient_norms = [], []
start = time.perf_counter()
for step in range(OUTER_STEPS):
    hypergradient, losses = torch.zeros_like(log_lr), []
    for pair in range(PAIRS):
        seed = TRAIN_BASE + step * PAIRS + pair
        maml = memmaml.MAML(fresh_network(seed), cross_entropy,
                            memmaml.SGD(memmaml.PerStep(log_lr.exp(), every=EVERY)),
                            schedule=SCHEDULE, preserve_rng_state=False)  # the MLP draws no random numbers
        loss = cross_entropy(maml(minibatches(seed, T)).model, val_set)
        hypergradient += torch.autograd.grad(loss, log_lr)[0] / PAIRS
        losses.append(loss.item())
    norm = hypergradient.norm().item()
    log_lr.grad = hypergradient * min(1.0, HG_CLIP / norm) if math.isfinite(norm) else None
    if log_lr.grad is not None:
        outer_optimizer.step()
    with torch.no_grad():
        log_lr.clamp_(max=math.log(LR_CAP))
    outer_losses.append(np.mean(losses))
    hypergradient_norms.append(norm)
    print(f"outer step {step:>2}: validation loss {outer_losses[-1]:.4f}, hypergradient norm {norm:.2e}, "
          f"{time.perf_counter() - start:.0f} s")
learned_lrs = log_lr.exp().detach()
print("learned learning rates per block:", " ".join(f"{v:.2f}" for v in learned_lrs.tolist()))


# %% [markdown]
# ### Held-out comparison
#
# Both schedules train networks from initialisations and batch orders that neither the
# grid nor the outer loop used; we compare the validation loss (what the schedule was
# trained to lower) and the test accuracy (data nothing here has seen).


# %%
held_out = {}
for name, lrs in (("best constant", [BEST_LR] * blocks), ("learned schedule", learned_lrs)):
    nets = [train_run(lrs, HELD_OUT_BASE + s) for s in range(EVAL_SEEDS)]
    held_out[name] = np.array([[cross_entropy(n, val_set).item(), accuracy(n, test_set)] for n in nets])

rows = ["| schedule | validation loss | test accuracy |", "|---|---:|---:|"]
for name, values in held_out.items():
    rows.append(f"| {name} | {values[:, 0].mean():.4f} ± {values[:, 0].std(ddof=1):.4f} | "
                f"{values[:, 1].mean():.1%} ± {values[:, 1].std(ddof=1):.1%} |")
difference = held_out["learned schedule"] - held_out["best constant"]  # paired: the same seeds
half_width = 1.96 * difference.std(0, ddof=1) / math.sqrt(EVAL_SEEDS)
LR_WINS = int((difference[:, 0] < 0).sum())
display(Markdown(f"Mean ± standard deviation over {EVAL_SEEDS} held-out training runs\n\n" + "\n".join(rows)))
print(f"learned minus constant, paired over the same {EVAL_SEEDS} runs (± 1.96 standard errors): "
      f"validation loss {difference[:, 0].mean():+.4f} ± {half_width[0]:.4f}, "
      f"test accuracy {difference[:, 1].mean():+.2%} ± {half_width[1]:.2%}; "
      f"the learned schedule has the lower validation loss in {LR_WINS} of {EVAL_SEEDS} runs")

steps = np.arange(T)
fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4))
ax.step(steps, learned_lrs.numpy()[steps // EVERY], where="post", label="learned schedule")
ax.axhline(BEST_LR, color="C1", ls="--", label=f"best constant ({BEST_LR})")
ax.set_xlabel("SGD step")
ax.set_ylabel("learning rate")
ax.set_title(f"learned learning rates, one per {EVERY} steps")
ax.legend()
ax2.plot(outer_losses, "o-", label="training runs of the outer loop")
ax2.axhline(np.mean(grid[BEST_LR]), color="C1", ls="--", label="best constant (grid runs)")
ax2.set_xlabel("outer step")
ax2.set_ylabel(f"validation loss after {T} steps")
ax2.legend()
fig.tight_layout()
plt.show()


# %% [markdown]
# ## 2. Dataset distillation
#
# Ten learnable 8×8 images with the fixed labels 0, …, 9, and one learnable learning
# rate. An outer step initialises a fresh MLP (a new seed every time), trains it by SGD
# on the ten images for `T_DISTILL` steps (the whole synthetic set at every step), and
# measures its cross-entropy on 256 random real training digits; Adam updates the
# images and the log learning rate with the exact gradient of that loss.
#
# The images reach the inner loop as the *batches*: every step's batch is
# `(images, labels)` with `images.requires_grad`. The checkpointed engine gives
# meta-gradients to every tensor that requires grad in the batches (a tensor captured
# in the loss function's closure would get none from it).


# %%
LABELS = torch.arange(10)
images = (0.5 * torch.rand(10, 64, generator=torch.Generator().manual_seed(0))).requires_grad_()
log_distill_lr = torch.tensor(math.log(0.3), requires_grad=True)
distill_optimizer = torch.optim.Adam([{"params": [images]}, {"params": [log_distill_lr], "lr": DISTILL_LR_LR}],
                                     lr=IMAGE_LR)
real_batches = torch.Generator().manual_seed(5)
distill_losses = []
start = time.perf_counter()
for step in range(DISTILL_STEPS):
    maml = memmaml.MAML(fresh_network(TRAIN_BASE + step), cross_entropy, memmaml.SGD(log_distill_lr.exp()),
                        schedule=SCHEDULE, preserve_rng_state=False)
    trained = maml([(images, LABELS)] * T_DISTILL).model
    idx = torch.randint(0, len(train_set[1]), (DISTILL_BATCH,), generator=real_batches)
    loss = cross_entropy(trained, (train_set[0][idx], train_set[1][idx]))
    distill_optimizer.zero_grad()
    loss.backward()
    distill_optimizer.step()
    distill_losses.append(loss.item())
    if step % max(1, DISTILL_STEPS // 8) == 0 or step == DISTILL_STEPS - 1:
        print(f"outer step {step:>3}: loss on real digits {loss.item():.3f}, "
              f"learning rate {log_distill_lr.exp().item():.3f}, {time.perf_counter() - start:.0f} s")
DISTILL_LR = log_distill_lr.exp().item()
distilled = images.detach().clone()


# %% [markdown]
# ### What ten images are worth
#
# Test accuracy of networks trained on nothing but ten images, from fresh
# initialisations that the outer loop never used, each for `T_DISTILL` SGD steps:
#
# * the ten distilled images, at the learned learning rate;
# * ten random real training images, one per class (a new draw for every network), at
#   the learned learning rate, and at the best of a small grid (picked by the mean
#   validation loss of other networks) so that the real images are not handicapped by
#   a learning rate tuned for the synthetic ones;
# * for reference, the full training set: the same number of steps, 64 random training
#   digits per step, at the best constant learning rate of part 1.


# %%
def train_on_images(inputs, labels, lr, seed, steps=T_DISTILL):
    with torch.no_grad():
        return memmaml.MAML(fresh_network(seed), cross_entropy, memmaml.SGD(lr))([(inputs, labels)] * steps).model


def one_real_per_class(seed):
    generator = torch.Generator().manual_seed(seed)
    picks = [torch.nonzero(train_set[1] == c).squeeze(1) for c in range(10)]
    return torch.stack([train_set[0][p[torch.randint(len(p), (1,), generator=generator)]][0] for p in picks])


REAL_LR_GRID = [0.1, 0.3, 1.0, 2.0]
tuning = {lr: np.mean([cross_entropy(train_on_images(one_real_per_class(GRID_BASE + s), LABELS, lr, GRID_BASE + s),
                                     val_set).item() for s in range(5)]) for lr in REAL_LR_GRID}
REAL_LR = min(tuning, key=tuning.get)
print("real images, tuning grid (mean validation loss): "
      + ", ".join(f"lr {lr}: {v:.3f}" for lr, v in tuning.items()) + f"; chosen {REAL_LR}")

eval_seeds = [HELD_OUT_BASE + s for s in range(DISTILL_EVAL_SEEDS)]
distill_results = {
    f"10 distilled images, lr {DISTILL_LR:.2f} (learned)":
        [accuracy(train_on_images(distilled, LABELS, DISTILL_LR, s), test_set) for s in eval_seeds],
    f"10 real images, lr {DISTILL_LR:.2f} (learned for the distilled ones)":
        [accuracy(train_on_images(one_real_per_class(s), LABELS, DISTILL_LR, s), test_set) for s in eval_seeds],
    f"10 real images, lr {REAL_LR} (tuned)":
        [accuracy(train_on_images(one_real_per_class(s), LABELS, REAL_LR, s), test_set) for s in eval_seeds],
    f"full training set (1,000 digits), {T_DISTILL} steps of {BATCH}, lr {BEST_LR}":
        [accuracy(train_run([BEST_LR] * blocks, s, steps=T_DISTILL), test_set) for s in eval_seeds],
}
rows = ["| trained on | test accuracy |", "|---|---:|"]
for name, accs in distill_results.items():
    rows.append(f"| {name} | {np.mean(accs):.1%} ± {np.std(accs, ddof=1):.1%} |")
display(Markdown(f"Mean ± standard deviation over {DISTILL_EVAL_SEEDS} fresh initialisations, {T_DISTILL} SGD steps "
                 "each\n\n" + "\n".join(rows)))
DISTILL_ACC = np.mean(next(iter(distill_results.values())))
REAL_ACC = max(np.mean(v) for k, v in distill_results.items() if k.startswith("10 real"))

fig, axes = plt.subplots(2, 10, figsize=(12, 3.3))
for c in range(10):
    axes[0, c].imshow(distilled[c].view(8, 8), cmap="gray")
    axes[0, c].set_title(f"distilled {c}", fontsize=8)
    axes[1, c].imshow(one_real_per_class(HELD_OUT_BASE)[c].view(8, 8), cmap="gray", vmin=0, vmax=1)
    axes[1, c].set_title(f"real {c}", fontsize=8)
for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
fig.suptitle("top: the ten distilled images (each on its own grey scale); bottom: one real training digit per class")
fig.tight_layout()
plt.show()


# %% [markdown]
# For comparison, Wang et al. distil MNIST (28×28, 60,000 training images) with a
# LeNet; they report accuracy close to that of full training from ten distilled images
# when the network's initialisation is fixed and known, and much lower accuracy when
# the images must work for random initialisations, as here. This setting is much
# smaller (8×8 digits, 1,000 training digits, a 32-unit MLP, one learning rate for all
# steps), so its numbers are not comparable with theirs; the table above is what it
# gives.
#
# ## 3. Memory and exactness
#
# ### Peak memory: naive against binomial
#
# `memmaml.track_memory("cpu")` counts the bytes of the tensors created inside the
# block and still alive (the figure a GPU would hold), here for one hypergradient: the
# unroll, the outer loss and `torch.autograd.grad`. The naive engine
# (`schedule=None`) keeps the graph of every step; the binomial one keeps at most
# `SLOTS` parameter states and one step's graph, so its peak should barely move from
# $T/10$ to $T$ steps.


# %%
def lr_hypergradient(schedule, steps, dtype=torch.float32, seed=TRAIN_BASE, every=EVERY, offload=False):
    network = fresh_network(seed).to(dtype)
    log_rates = torch.full((math.ceil(steps / every),), math.log(BEST_LR), dtype=dtype, requires_grad=True)
    batches = [(x.to(dtype), y) for x, y in minibatches(seed, steps)]
    maml = memmaml.MAML(network, cross_entropy, memmaml.SGD(memmaml.PerStep(log_rates.exp(), every=every)),
                        schedule=schedule, offload=offload, preserve_rng_state=False)
    with memmaml.track_memory("cpu") as memory:
        loss = cross_entropy(maml(batches).model, (val_set[0].to(dtype), val_set[1]))
        gradient = torch.autograd.grad(loss, log_rates)[0]
    return gradient, memory.peak_bytes, memory.host_peak_bytes


def distill_hypergradient(schedule, steps, dtype=torch.float32, seed=TRAIN_BASE, offload=False):
    network = fresh_network(seed).to(dtype)
    inputs = distilled.to(dtype).requires_grad_()
    log_rate = torch.tensor(math.log(DISTILL_LR), dtype=dtype, requires_grad=True)
    maml = memmaml.MAML(network, cross_entropy, memmaml.SGD(log_rate.exp()), schedule=schedule, offload=offload,
                        preserve_rng_state=False)
    with memmaml.track_memory("cpu") as memory:
        loss = cross_entropy(maml([(inputs, LABELS)] * steps).model, (train_set[0].to(dtype), train_set[1]))
        gradient = torch.cat([g.flatten() for g in torch.autograd.grad(loss, [inputs, log_rate])])
    return gradient, memory.peak_bytes, memory.host_peak_bytes


fmt = memmaml.format_bytes
peaks, host = {}, {}
MEMORY_CASES = [(f"learning-rate schedule, T = {T}", lr_hypergradient, T),
                (f"learning-rate schedule, T = {MEMORY_T_SHORT}", lr_hypergradient, MEMORY_T_SHORT),
                (f"distillation, T = {T_DISTILL}", distill_hypergradient, T_DISTILL)]
for name, hypergradient_of, steps in MEMORY_CASES:
    peaks[name] = [hypergradient_of(s, steps)[1] for s in (None, SCHEDULE)]
    offloaded = hypergradient_of(SCHEDULE, steps, offload=True)
    peaks[name].append(offloaded[1])
    host[name] = offloaded[2]  # the stored states, in host memory
    # offloading moves the stored states, not the arithmetic: the same hypergradient, bitwise on CPU
    assert torch.equal(offloaded[0], hypergradient_of(SCHEDULE, steps)[0]), name
rows = [f"| problem | naive (`schedule=None`) | `{SCHEDULE}` | naive / binomial | `{SCHEDULE}`, `offload=True` "
        "(device; host) |", "|---|---:|---:|---:|---:|"]
for name, (naive, binomial, offload) in peaks.items():
    rows.append(f"| {name} | {fmt(naive)} | {fmt(binomial)} | {naive / binomial:.0f}× | "
                f"{fmt(offload)}; {fmt(host[name])} |")
display(Markdown("Peak memory of one hypergradient\n\n" + "\n".join(rows)))
long_naive, long_binomial, _ = peaks[f"learning-rate schedule, T = {T}"]
short_naive, short_binomial, _ = peaks[f"learning-rate schedule, T = {MEMORY_T_SHORT}"]
GROWTH = long_binomial / short_binomial
print(f"peak at T = {T} / peak at T = {MEMORY_T_SHORT}: binomial {GROWTH:.3f}, naive {long_naive / short_naive:.1f}")
assert GROWTH <= 1.2, GROWTH


# %% [markdown]
# ### The same hypergradient
#
# Naive and binomial hypergradients on the same short run ($T = 30$), for both
# problems (six learning rates, one per 5 steps; the ten images and the learning rate),
# in float32 and in float64; `binomial:5` has to replay most steps several times.
# The difference printed is the largest absolute difference of an entry, relative to
# the largest entry of the naive hypergradient (0 means bitwise equal).


# %%
def relative_difference(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}
agreement = {}
CHECK_EVERY = 5  # six learnable learning rates over the 30 steps
problems = (("learning-rate schedule", lambda *a: lr_hypergradient(*a, every=CHECK_EVERY)),
            ("distillation", distill_hypergradient))
for problem, hypergradient_of in problems:
    for dtype, tolerance in TOLERANCE.items():
        naive = hypergradient_of(None, CHECK_T, dtype)[0]
        binomial = hypergradient_of("binomial:5", CHECK_T, dtype)[0]  # few slots for 30 steps: many replays
        agreement[problem, dtype] = relative_difference(binomial, naive)
        print(f"{problem}, {str(dtype).removeprefix('torch.')}: {naive.numel()} entries, norm {naive.norm():.3e}; "
              f"max relative difference binomial vs naive {agreement[problem, dtype]:.1e}")
        assert agreement[problem, dtype] < tolerance, (problem, dtype, agreement[problem, dtype])


# %% [markdown]
# ## Summary
#
# The next cell writes the measured results of this run.


# %%
constant, learned = held_out["best constant"].mean(0), held_out["learned schedule"].mean(0)
lr_peaks = peaks[f"learning-rate schedule, T = {T}"]
distill_peaks = peaks[f"distillation, T = {T_DISTILL}"]
worst32 = max(v for (_, d), v in agreement.items() if d == torch.float32)
worst64 = max(v for (_, d), v in agreement.items() if d == torch.float64)
display(Markdown(f"""\
* **Learned learning-rate schedule** ({T} SGD steps, {blocks} learning rates, {OUTER_STEPS} outer steps of
  {PAIRS} runs each). On {EVAL_SEEDS} held-out runs: validation loss {learned[0]:.4f} against {constant[0]:.4f}
  for the best constant learning rate ({BEST_LR}), a paired difference of {difference[:, 0].mean():+.4f} ±
  {half_width[0]:.4f} (1.96 standard errors), lower in {LR_WINS} of {EVAL_SEEDS} runs; test accuracy
  {learned[1]:.1%} against {constant[1]:.1%}.
* **Dataset distillation** ({T_DISTILL} SGD steps, {DISTILL_STEPS} outer steps). Networks trained on nothing
  but the ten distilled images reach {DISTILL_ACC:.1%} test accuracy from fresh initialisations; on ten real images
  (one per class), at best {REAL_ACC:.1%}.
* **Memory.** One hypergradient through {T} steps: {fmt(lr_peaks[0])} naive, {fmt(lr_peaks[1])} with
  `{SCHEDULE}` ({lr_peaks[0] / lr_peaks[1]:.0f}× less); the binomial peak at {T} steps is {GROWTH:.2f}× its peak at
  {MEMORY_T_SHORT}; with `offload=True`, {fmt(lr_peaks[2])} on the device and the stored states in host memory.
  Distillation through {T_DISTILL} steps: {fmt(distill_peaks[0])} against
  {fmt(distill_peaks[1])}.
* **Exactness.** Binomial and naive hypergradients agree to {worst32:.0e} (float32) and {worst64:.0e}
  (float64), relative to the largest entry.
"""))
print(f"quick mode: {QUICK}; whole notebook: {time.perf_counter() - NOTEBOOK_START:.0f} s")


# %% [markdown]
# The memory figures follow from the schedules: the binomial engine stores at most
# `SLOTS` states whatever the length of the run, and pays with recomputation (each
# step is evaluated a few times without a graph in the backward pass); the naive
# engine's graph grows with every step. The learned quantities are the less certain
# part: a learned schedule is judged above on runs it never saw, and the size of its
# gain, large or small, is what the paired difference says. Long-horizon
# hypergradients are chaotic, which is why the outer loop clips them; a longer outer
# loop, more runs per outer step, or a smaller `OUTER_LR` trade time for stability.
