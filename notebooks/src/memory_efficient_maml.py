# %% [markdown]
# # Memory-efficient MAML: backpropagating through hundreds of inner steps
#
# MAML adapts a model with a few optimizer steps on a task (the *inner loop*) and
# then differentiates the loss of the adapted model with respect to the initial
# weights (the *meta-gradient*). Differentiating through the inner loop normally
# keeps the autograd graph of every inner step alive, so memory grows with the
# number of steps: with ResNet-18 on a batch of 16 images of 224×224, an 11 GB GPU
# holds only about ten to fourteen steps.
#
# `memmaml.MAML(model, loss_function, optimizer, schedule="uniform:k")` keeps the inner
# loop's state only at the start of every segment of `k` steps and replays one segment
# at a time in the backward pass (`memmaml.GradientCheckpointMAML(..., checkpoint_steps=k)`
# is the same, under the name of the predecessor package torch_maml). The meta-gradient
# is the same as the naive one's (`schedule=None`); memory is about `ceil(n / k)` stored
# states plus `k` steps' graphs instead of `n` steps' graphs.
#
# This notebook shows it on the setting of the original demo:
#
# * **Data**: random tensors of shape (batch, 3, H, W) with random labels
# * **Model**: ResNet-18 (randomly initialised, nothing is downloaded)
# * **Inner optimizer**: SGD with learning rate 0.01; meta-gradients clipped through
#   the unroll with `max_grad_grad_norm=1e2`
# * **Sizes**: batch 16 at 224×224 and 100 to 500 inner steps on a GPU; smaller
#   images, batch and step counts on a CPU (one cell below chooses them)
#
# **About the stored outputs.** The outputs saved in this file come from a full run by
# `python notebooks/build.py --execute`; the configuration cell prints the device it ran
# on. On a CPU it uses the CPU sizes of that cell (batch 4 at 64×64), and memory figures
# are the live-tensor bytes counted by `memmaml.track_memory("cpu")`. Run it on Colab
# with a GPU runtime for the full 224×224 setting (upload the memmaml source first: the
# first code cell installs it).


# %%
import math
import os
import time
import warnings

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from IPython.display import Markdown, display

import memmaml
from memmaml.bench import quick_mode
from memmaml.models import resnet18

with warnings.catch_warnings():  # text progress bars without ipywidgets, and no warning about it
    warnings.filterwarnings("ignore", message="IProgress not found")
    from tqdm.auto import tqdm

print(f"memmaml {memmaml.__version__}, torch {torch.__version__}")


# %% [markdown]
# ## Configuration
#
# One cell chooses every size. On a GPU it is the original demo's setting; on a CPU the
# images, the batch and the step counts are smaller so that the notebook finishes in a
# few minutes. The code below is the same for both.
#
# `NAIVE_MAX_STEPS` bounds the naive runs on a CPU, where running out of memory would
# take the whole machine down rather than raise a clean error; larger step counts are
# extrapolated and marked as such. On a GPU every count is tried and an out-of-memory
# error is caught and shown.


# %%
QUICK = quick_mode()  # MEMMAML_NOTEBOOK_QUICK=1 (the test suite): every cell runs, on much smaller sizes
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
NOTEBOOK_START = time.perf_counter()

if QUICK:
    BATCH_SIZE, IMAGE_SIZE = 2, 32
    CHECK_STEPS = 3             # sanity check: naive and checkpointed must agree here
    MEMORY_STEPS = [1, 4]       # step counts of the side-by-side memory comparison
    NAIVE_MAX_STEPS = 4
    LONG_STEPS = [8]            # long unrolls with the checkpointed engine
    OTHER_STEPS = 4             # different batches per step; RMSProp
    CHECKPOINT_STEPS = 2
elif DEVICE.type == "cuda":     # the original demo: batch 16 at 224x224
    BATCH_SIZE, IMAGE_SIZE = 16, 224
    CHECK_STEPS = 10            # fits naive MAML on an 11 GB card
    MEMORY_STEPS = [1, 5, 10, 20, 50, 100]
    NAIVE_MAX_STEPS = None      # try them all; out-of-memory is caught
    LONG_STEPS = [100, 500]
    OTHER_STEPS = 100
    CHECKPOINT_STEPS = 5
else:                           # a CPU: smaller images and batch, fewer steps
    BATCH_SIZE, IMAGE_SIZE = 4, 64
    CHECK_STEPS = 5
    MEMORY_STEPS = [1, 4, 16, 64]
    NAIVE_MAX_STEPS = 16        # about 1 GB; larger counts are extrapolated, not run
    LONG_STEPS = [100, 200]
    OTHER_STEPS = 30
    CHECKPOINT_STEPS = 5

NUM_CLASSES = 10
LEARNING_RATE = 0.01
MAX_GRAD_GRAD_NORM = 1e2

if DEVICE.type == "cuda":  # deterministic kernels: replays then match the first run exactly (see the tips)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
torch.manual_seed(0)
print(f"quick mode: {QUICK}; device: {DEVICE}"
      + (f" ({torch.cuda.get_device_name(DEVICE)})" if DEVICE.type == "cuda"
         else f" ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"))
print(f"batch {BATCH_SIZE} x 3 x {IMAGE_SIZE} x {IMAGE_SIZE}; check at {CHECK_STEPS} steps; "
      f"memory at {MEMORY_STEPS} steps; long runs of {LONG_STEPS} steps; segments of {CHECKPOINT_STEPS}")


# %% [markdown]
# ## Model, loss and data
#
# `loss_function(model, batch)` is all memmaml needs: it is called with a model that
# computes with the adapted weights and must return a scalar. The meta-parameters are
# the ResNet's own parameters; after `query_loss.backward()` their `.grad` holds the
# meta-gradient.


# %%
model = resnet18(num_classes=NUM_CLASSES).to(DEVICE)  # random init, nothing is downloaded


def loss_function(model, batch):
    images, labels = batch
    return F.cross_entropy(model(images), labels)


def random_batch():
    images = torch.randn(BATCH_SIZE, 3, IMAGE_SIZE, IMAGE_SIZE, device=DEVICE)
    labels = torch.randint(0, NUM_CLASSES, (BATCH_SIZE,), device=DEVICE)
    return images, labels


support = random_batch()  # the inner loop's batch
query = random_batch()    # the batch of the meta-loss

STATE_BYTES = sum(p.numel() * p.element_size() for p in model.parameters())
print(f"ResNet-18: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
      f"{STATE_BYTES / 2**20:.1f} MiB per copy of the weights")


def meta_gradient(maml, inputs, **kwargs):
    """Inner loop, query loss and its backward pass; returns (result, grads, peak bytes, seconds)."""
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    with memmaml.track_memory(DEVICE) as memory:
        result = maml(inputs, max_grad_grad_norm=MAX_GRAD_GRAD_NORM, **kwargs)
        loss_function(result.model, query).backward()
    seconds = time.perf_counter() - start
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()}
    return result, grads, memory.peak_bytes, seconds


def gib(nbytes):
    return nbytes / 2**30


# %% [markdown]
# ## 1. Sanity check: the checkpointed meta-gradient equals the naive one
#
# First a step count that naive MAML can hold. Both engines run the same inner steps
# on the same batch; the checkpointed one uses segments of 2 steps (`schedule="uniform:2"`),
# so its replay crosses segment boundaries (and the last segment is shorter when the
# count is odd).
#
# ResNet-18 has BatchNorm: in train mode each inner step updates the running
# statistics. The checkpointed engine must update them once per step, like the naive
# loop, and never again during its replay, so both runs start from the same
# statistics and must end with the same ones.


# %%
naive = memmaml.MAML(model, loss_function, memmaml.SGD(LEARNING_RATE))  # schedule=None: every step's graph
checkpointed = memmaml.MAML(model, loss_function, memmaml.SGD(LEARNING_RATE), schedule="uniform:2")
inputs = [support] * CHECK_STEPS

buffers_before = {name: b.clone() for name, b in model.named_buffers()}
naive_result, naive_grads, naive_peak, naive_seconds = meta_gradient(naive, inputs)
buffers_naive = {name: b.clone() for name, b in model.named_buffers()}

with torch.no_grad():  # start the second run from the same BatchNorm statistics
    for name, b in model.named_buffers():
        b.copy_(buffers_before[name])
ckpt_result, ckpt_grads, ckpt_peak, ckpt_seconds = meta_gradient(checkpointed, inputs)

max_difference = max((naive_grads[n] - ckpt_grads[n]).abs().max().item() for n in naive_grads)
largest = max(g.abs().max().item() for g in naive_grads.values())
loss_difference = max(abs(a.item() - b.item()) for a, b in zip(naive_result.loss_history, ckpt_result.loss_history))
print(f"{CHECK_STEPS} inner steps, inner loss {naive_result.loss_history[0].item():.4f} -> "
      f"{naive_result.loss_history[-1].item():.4f}")
print(f"max |naive - checkpointed| over all meta-gradient entries: {max_difference:.3e} "
      f"(largest entry {largest:.3e})")
print(f"max difference of the inner losses: {loss_difference:.3e}")
print(f"peak memory: naive {gib(naive_peak):.3f} GiB, checkpointed {gib(ckpt_peak):.3f} GiB")

tolerance = 1e-5 if DEVICE.type == "cpu" else 1e-3  # float32; relative to the largest entry
assert max_difference <= tolerance * largest, (max_difference, largest)
assert all(torch.equal(buffers_naive[n], b) for n, b in model.named_buffers()), "BatchNorm statistics differ"
print("OK: same meta-gradient, same BatchNorm statistics")
del naive_result, ckpt_result, naive_grads, ckpt_grads


# %% [markdown]
# ## 2. Peak memory of both engines, side by side
#
# Each step count runs the inner loop, the query loss and the meta-backward pass once
# per engine and records the peak memory of live tensors (on a GPU, the CUDA caching
# allocator's count; on a CPU, the bytes of tensor storages alive at once). Naive MAML
# grows by one step's graph per step; the checkpointed engine stores one state (a copy
# of the weights) per segment and one segment's graph at a time.
#
# On a GPU, an out-of-memory error is caught and recorded; larger counts are then
# skipped for the naive engine.
#
# At a handful of steps the checkpointed engine can need *more* memory than the naive
# one: it keeps copies of the state at segment starts, and on small images one step's
# graph is not much larger than a copy of the weights. Its advantage grows with the
# number of steps.


# %%
checkpointed = memmaml.MAML(model, loss_function, memmaml.SGD(LEARNING_RATE),
                            schedule=memmaml.Uniform(CHECKPOINT_STEPS))
rows = []
naive_out_of_memory = False
for num_steps in tqdm(MEMORY_STEPS, desc="step counts"):
    inputs = [support] * num_steps
    row = {"steps": num_steps}
    if naive_out_of_memory:
        row["naive"] = "out of memory at fewer steps"
    elif NAIVE_MAX_STEPS is not None and num_steps > NAIVE_MAX_STEPS:
        row["naive"] = "not run"
    else:
        try:
            _, _, row["naive_bytes"], row["naive_seconds"] = meta_gradient(naive, inputs)
        except torch.cuda.OutOfMemoryError:
            naive_out_of_memory = True
            row["naive"] = "out of memory"
        if naive_out_of_memory:  # outside the except block, once the failed run's tensors are gone
            model.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
    _, _, row["ckpt_bytes"], row["ckpt_seconds"] = meta_gradient(checkpointed, inputs)
    rows.append(row)

# each naive step adds one step's graph: fit a line through the measured naive peaks
measured = [(r["steps"], r["naive_bytes"]) for r in rows if "naive_bytes" in r]
slope = intercept = None
if len(measured) >= 2:
    slope, intercept = np.polyfit(*zip(*measured), 1)

columns = ["inner steps", "naive peak", f"checkpointed peak (segments of {CHECKPOINT_STEPS})", "naive time",
           "checkpointed time"]
table = ["| " + " | ".join(columns) + " |", "|---:" * len(columns) + "|"]
for r in rows:
    if "naive_bytes" in r:
        naive_cell, naive_time = f"{gib(r['naive_bytes']):.2f} GiB", f"{r['naive_seconds']:.1f} s"
    elif r["naive"] == "not run" and slope is not None:
        naive_cell, naive_time = f"≈ {gib(slope * r['steps'] + intercept):.1f} GiB (extrapolated, not run)", "–"
    else:
        naive_cell, naive_time = r["naive"], "–"
    table.append(f"| {r['steps']} | {naive_cell} | {gib(r['ckpt_bytes']):.2f} GiB | {naive_time} | "
                 f"{r['ckpt_seconds']:.1f} s |")
display(Markdown("\n".join(table)))
if slope is not None:
    best = math.sqrt(max(MEMORY_STEPS) * STATE_BYTES / slope)
    print(f"one naive inner step holds about {slope / 2**20:.0f} MiB; "
          f"one stored state is {STATE_BYTES / 2**20:.0f} MiB")
    print(f"memory ~ (n / k) * state + k * step is smallest at k = sqrt(n * state / step) = {best:.1f} "
          f"for n = {max(MEMORY_STEPS)}")


# %%
fig, ax = plt.subplots(figsize=(7, 4))
steps = [r["steps"] for r in rows]
ax.plot(steps, [gib(r["ckpt_bytes"]) for r in rows], "o-", label=f"checkpointed (segments of {CHECKPOINT_STEPS})")
naive_steps = [r["steps"] for r in rows if "naive_bytes" in r]
ax.plot(naive_steps, [gib(r["naive_bytes"]) for r in rows if "naive_bytes" in r], "s-", label="naive")
skipped = [r["steps"] for r in rows if r.get("naive") == "not run"]
if skipped and slope is not None:
    ax.plot([naive_steps[-1], *skipped], [gib(slope * s + intercept) for s in [naive_steps[-1], *skipped]],
            "s--", color="C1", mfc="none", label="naive, extrapolated (not run)")
out_of_memory = [r["steps"] for r in rows if r.get("naive") == "out of memory"]
if out_of_memory:
    ax.axvline(out_of_memory[0], color="C3", ls=":", label="naive: out of memory")
if DEVICE.type == "cuda":
    ax.axhline(torch.cuda.get_device_properties(DEVICE).total_memory / 2**30, color="grey", ls="--", lw=1,
               label="GPU memory")
ax.set_xscale("log")
ax.minorticks_off()
ax.set_xticks(steps, [str(s) for s in steps])
ax.set_xlabel("inner steps")
ax.set_ylabel("peak memory (GiB)")
ax.set_title(f"ResNet-18, batch {BATCH_SIZE} at {IMAGE_SIZE}x{IMAGE_SIZE}, {DEVICE.type}")
ax.legend()
plt.show()


# %% [markdown]
# ## 3. A hundred inner steps and beyond, with the checkpointed engine
#
# Now the long unrolls naive MAML cannot hold on a small GPU. `progress=True` shows the
# inner loop's forward pass and the replay during the backward pass. The inner loss
# (before each step) goes down as SGD fits the fixed random batch.


# %%
histories = {}
for num_steps in LONG_STEPS:
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    result = checkpointed([support] * num_steps, max_grad_grad_norm=MAX_GRAD_GRAD_NORM, progress=True)
    forward_seconds = time.perf_counter() - start
    query_loss = loss_function(result.model, query)
    query_loss.backward()
    total_seconds = time.perf_counter() - start
    meta_grad_norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters())).item()
    histories[num_steps] = torch.stack(result.loss_history).detach().cpu()
    print(f"{num_steps} steps: inner loss {histories[num_steps][0]:.4f} -> {histories[num_steps][-1]:.4f}, "
          f"query loss {query_loss.item():.4f}, meta-gradient norm {meta_grad_norm:.3e}, "
          f"inner loop {forward_seconds:.1f} s, with meta-backward {total_seconds:.1f} s")
    del result, query_loss

fig, ax = plt.subplots(figsize=(7, 4))
for num_steps, history in histories.items():
    ax.plot(history.numpy(), label=f"{num_steps} steps")
ax.set_yscale("log")
ax.set_xlabel("inner step")
ax.set_ylabel("inner loss before the step")
ax.set_title("Inner loop: SGD(lr=0.01) on one batch")
ax.legend()
plt.show()


# %% [markdown]
# ## 4. A different batch at every inner step
#
# `inputs` is a list with one batch per inner step, so the inner loop can be stochastic
# gradient descent over a stream of batches instead of full-batch descent on one.
# With fresh random labels at every step there is nothing to fit: the loss stays near
# log(10) ≈ 2.3 and fluctuates from batch to batch.


# %%
stream = [random_batch() for _ in range(OTHER_STEPS)]
result, grads, peak, seconds = meta_gradient(checkpointed, stream)
stream_history = torch.stack(result.loss_history).detach().cpu()
print(f"{OTHER_STEPS} steps on {OTHER_STEPS} different batches: {seconds:.1f} s, peak {gib(peak):.2f} GiB")
del result, grads


# %% [markdown]
# ## 5. RMSProp, with a learnable learning rate
#
# Any memmaml in-graph optimizer can run the inner loop: `memmaml.SGD` (momentum,
# Nesterov, weight decay), `memmaml.RMSProp`, `memmaml.Adam`, and the names of the
# predecessor package, `memmaml.IngraphGradientDescent` and `memmaml.IngraphRMSProp`.
# A hyperparameter given as a tensor with `requires_grad=True` receives a
# meta-gradient, here the inner learning rate.


# %%
inner_lr = torch.tensor(1e-4, device=DEVICE, requires_grad=True)
rmsprop = memmaml.MAML(model, loss_function, memmaml.RMSProp(inner_lr, alpha=0.99, momentum=0.9),
                       schedule=memmaml.Uniform(CHECKPOINT_STEPS))
result, grads, peak, seconds = meta_gradient(rmsprop, [support] * OTHER_STEPS)
rmsprop_history = torch.stack(result.loss_history).detach().cpu()
print(f"RMSProp, {OTHER_STEPS} steps: inner loss {rmsprop_history[0]:.4f} -> {rmsprop_history[-1]:.4f}, "
      f"{seconds:.1f} s, peak {gib(peak):.2f} GiB")
print(f"d(query loss) / d(inner learning rate) = {inner_lr.grad.item():.4e}")
del result, grads

sgd_history = histories[LONG_STEPS[0]][:OTHER_STEPS]
fig, ax = plt.subplots(figsize=(7, 4))
ax.plot(sgd_history.numpy(), label="SGD(lr=0.01), same batch every step")
ax.plot(rmsprop_history.numpy(), label="RMSProp(lr=1e-4, momentum=0.9), same batch")
ax.plot(stream_history.numpy(), label="SGD(lr=0.01), a different batch every step")
ax.set_yscale("log")
ax.set_xlabel("inner step")
ax.set_ylabel("inner loss before the step")
ax.legend(loc="upper right", bbox_to_anchor=(1, 0.85), fontsize=9)
plt.show()


# %% [markdown]
# RMSProp's state holds two more tensors per weight than plain SGD's (the average of
# squared gradients and the momentum buffer), and each of its steps adds more
# element-wise operations to the graph, so both the stored states and a segment's
# graph are larger: compare the peak memory with the SGD run on different batches
# above, which has the same number of steps.


# %% [markdown]
# ## Tips
#
# **BatchNorm.** In train mode BatchNorm normalises with the statistics of the current
# batch, so the inner loop and the meta-gradient see batch statistics, and it updates
# its running statistics in place at every inner step. memmaml updates them once per
# inner step in both engines (replays run on copies), so a checkpointed run leaves the
# same running statistics as a naive one. They are shared by every task adapted from
# the same model; if that leaks information between tasks, build the model with
# `track_running_stats=False`, or save and restore the buffers around each task. In
# eval mode the running statistics are used and nothing is updated.
#
# **Clipping.** `max_grad_grad_norm` is not a clip of the final meta-gradient: at every
# inner step it clips the cotangent flowing back into that step's new parameters to
# that global L2 norm. The forward pass is unchanged. Long unrolls can multiply the
# backward signal by the same Jacobian hundreds of times; clipping at every step keeps
# it finite. Both engines clip at the same places, so they still agree. Clip the final
# meta-gradient separately with `torch.nn.utils.clip_grad_norm_` if you want that too.
#
# **Determinism.** On a CPU, replays recompute exactly what the first pass computed, and
# the meta-gradients of the two engines agree to rounding. On a GPU some kernels are
# non-deterministic (cuDNN's algorithm search and atomic additions in some backward
# kernels), so a replayed segment can differ from the first pass in the last bits and
# long unrolls drift. Set `torch.backends.cudnn.benchmark = False` and
# `torch.backends.cudnn.deterministic = True` (as this notebook does), or go further with
# `torch.use_deterministic_algorithms(True)` and the environment variable
# `CUBLAS_WORKSPACE_CONFIG=:4096:8`. Random numbers are taken care of: every stored
# state keeps the CPU and CUDA random-number-generator states, and replays restore them
# (`preserve_rng_state=True`, the default), so dropout and random augmentation inside
# the loss see the same numbers twice.
#
# **Choosing the segment length.** Memory is about `(n / k) * state + k * step`, which is
# smallest at `k = sqrt(n * state / step)`. For ResNet-18 on 224×224 images one step's
# graph is much larger than a copy of the weights, so short segments (about 5) win; on
# small images the two are closer and longer segments do as well. Every step but those
# of the last segment runs twice (once without a graph in the forward pass, once with it
# in the replay). For thousands of steps, `schedule="binomial:s"` (the fewest replays
# for `s` stored states) or `schedule="auto:10GiB"` (measures one step and picks the
# fastest schedule that fits the budget) do better than uniform segments.
#
# **First order.** `first_order=True` treats the inner gradients as constants: no
# second-order graph is built and the meta-gradient is the query gradient at the
# adapted weights. It is cheaper and often almost as good (see the sine-wave notebook).


# %%
print(f"quick mode: {QUICK}; device: {DEVICE}; batch {BATCH_SIZE} at {IMAGE_SIZE}x{IMAGE_SIZE}")
print(f"torch {torch.__version__}; whole notebook: {time.perf_counter() - NOTEBOOK_START:.0f} s")
