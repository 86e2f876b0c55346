# %% [markdown]
# # Sine-wave regression: MAML, first-order MAML, transfer learning and random initialisation
#
# The regression problem of Finn, Abbeel and Levine (2017), section 5.1. Each task is
# a sine wave $y = A \sin(x - \varphi)$ with amplitude $A \in [0.1, 5]$ and phase
# $\varphi \in [0, \pi]$, observed at $x \in [-5, 5]$. A model sees $K = 10$ points of a
# new task and must fit the whole curve after a few gradient steps. The network is an
# MLP with two hidden layers of 40 ReLU units; the inner learning rate is
# $\alpha = 0.01$.
#
# We compare four starting points for those gradient steps:
#
# * **MAML** (second order): meta-trained with memmaml through one inner step;
# * **first-order MAML**: the same, with `first_order=True`;
# * **transfer learning**: one network pretrained on all tasks jointly (it can only
#   learn their average), then fine-tuned;
# * **random initialisation**: a fresh network, fine-tuned.
#
# Then the cost: the wall time of a second-order meta-iteration against a first-order
# one (the paper reports the first-order version about 33% faster).
#
# Everything here is the package's: the tasks come from `memmaml.tasks.Sinusoid`, the
# network from `memmaml.models.mlp`, meta-training is `memmaml.MetaTrainer` and the
# held-out evaluation `memmaml.batched_evaluate`.
#
# **About the stored outputs.** They come from a full run by
# `python notebooks/build.py --execute` (the next cell prints the machine), with 2,000
# meta-iterations of 25 tasks each; the paper trains for 70,000. Expect MAML's curves to
# be less accurate than the paper's figures.


# %%
import math
import os
import time
import warnings

import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import Markdown, display

import memmaml
from memmaml.bench import quick_mode
from memmaml.models import mlp
from memmaml.tasks import Sinusoid, draw_seeds, mse_loss

with warnings.catch_warnings():  # text progress bars without ipywidgets, and no warning about it
    warnings.filterwarnings("ignore", message="IProgress not found")
    from tqdm.auto import tqdm

QUICK = quick_mode()  # MEMMAML_NOTEBOOK_QUICK=1 (the test suite): every cell runs, on much smaller sizes
NOTEBOOK_START = time.perf_counter()

K = 10                   # shots: support points per task (and as many query points)
INNER_LR = 0.01          # alpha, as in the paper
META_LR = 1e-3           # Adam, as in the paper
META_BATCH = 5 if QUICK else 25                 # tasks per meta-iteration (the paper: 25)
META_ITERATIONS = 20 if QUICK else 2000         # the paper: 70,000
EVAL_TASKS = 10 if QUICK else 300               # held-out tasks
EVAL_POINTS = 100                               # query points of a held-out task: where its error is measured
FINE_TUNE_STEPS = 10
TIMING_ITERATIONS = 5 if QUICK else 150

torch.set_num_threads(1)  # a 40-unit network is fastest on one thread
print(f"quick mode: {QUICK}; {META_ITERATIONS} meta-iterations of {META_BATCH} tasks; "
      f"{EVAL_TASKS} held-out tasks; device: cpu ({os.cpu_count()} cores), cuda available: "
      f"{torch.cuda.is_available()}")


# %% [markdown]
# ## Tasks and the network
#
# A task is an amplitude and a phase; its data are points drawn uniformly on [-5, 5].
# `memmaml.tasks.Sinusoid` builds the task an integer seed names, the same on every call:
# for training, $K$ support points and $K$ query points. Training tasks are named by a
# stream of seeds from a seeded generator; the held-out tasks by another one, and each
# has 100 query points, on which its error is measured.


# %%
train_source = Sinusoid(num_shots=K)  # K support and K query points per task
eval_source = Sinusoid(num_shots=K, num_query=EVAL_POINTS)
EVAL_SEED = 12345
held_out = eval_source.sample_batch(draw_seeds(torch.Generator().manual_seed(EVAL_SEED), EVAL_TASKS))


def make_network(seed):
    torch.manual_seed(seed)
    return mlp([1, 40, 40, 1])


print(f"training tasks: {train_source}")
print(f"held-out: {held_out.num_tasks} tasks, {K} support and {EVAL_POINTS} query points each")


# %% [markdown]
# ## Meta-training with memmaml
#
# `memmaml.MetaTrainer` runs the outer loop. A meta-iteration draws 25 tasks; for each,
# one inner SGD step on its 10 support points, then the loss of the adapted network on
# its 10 query points. The mean query loss is backpropagated to the initial weights and
# Adam takes a step. `vectorize=True` adapts the 25 tasks in one `torch.func.vmap` call
# instead of a Python loop over them (the same meta-gradient, several times faster for a
# network this small). `first_order=True` makes the inner gradient a constant: no
# second-order graph, and the meta-gradient is the query gradient at the adapted weights.
#
# Both versions start from the same initial weights and see the same tasks (the seed of
# the task stream is the same). At the end the trainer evaluates its network on the
# held-out tasks.


# %%
def meta_train(first_order, seed=0):
    config = memmaml.TrainerConfig(
        inner_optimizer=memmaml.SGD(INNER_LR), num_inner_steps=1, first_order=first_order,
        outer_lr=META_LR, meta_batch_size=META_BATCH, seed=seed, vectorize=True,
        num_eval_tasks=EVAL_TASKS, eval_seed=EVAL_SEED, eval_steps=(0, 1, FINE_TUNE_STEPS))
    trainer = memmaml.MetaTrainer(make_network(seed), train_source, config, eval_source=eval_source)
    rows = trainer.train(META_ITERATIONS)  # one "train" row per iteration, then an "eval" row
    losses = np.array([row["loss"] for row in rows if row["kind"] == "train"])
    seconds = np.array([row["sec_per_iter"] for row in rows if row["kind"] == "train"])
    evaluation = rows[-1]
    name = "first-order MAML" if first_order else "MAML"
    print(f"{name}: {seconds.sum():.0f} s in all; held-out MSE after one step "
          f"{evaluation['eval_loss@1']:.3f} ± {evaluation['eval_loss@1_ci95']:.3f}")
    return trainer, losses, seconds


maml_trainer, maml_losses, maml_seconds = meta_train(first_order=False)
fomaml_trainer, fomaml_losses, fomaml_seconds = meta_train(first_order=True)
maml_net, fomaml_net = maml_trainer.model, fomaml_trainer.model


# %% [markdown]
# ## The baselines
#
# **Transfer learning**: one network trained by plain regression on the points of all
# tasks together: the tasks MAML saw, with their support and query points, for the same
# number of iterations. Since the phases are spread over [0, π], the best it can do is
# the average of the sine waves. **Random initialisation**: a fresh network.


# %%
def pretrain(seed=0):
    net = make_network(seed)
    optimizer = torch.optim.Adam(net.parameters(), lr=META_LR)
    generator = torch.Generator().manual_seed(seed)  # the trainers' stream of task seeds
    losses = []
    for _ in tqdm(range(META_ITERATIONS), desc="transfer (joint training)", mininterval=1):
        tasks = train_source.sample_batch(draw_seeds(generator, META_BATCH))
        points = tuple(torch.cat(pair, dim=1) for pair in zip(tasks.support, tasks.query))  # inputs, targets
        optimizer.zero_grad()
        loss = mse_loss(net, points)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return net, np.array(losses)


transfer_net, transfer_losses = pretrain()
random_net = make_network(seed=1)

window = max(1, META_ITERATIONS // 50)


def smooth(values):
    return np.convolve(values, np.ones(window) / window, mode="valid")


fig, ax = plt.subplots(figsize=(7, 4))
ax.plot(smooth(maml_losses), label="MAML: query loss after one step")
ax.plot(smooth(fomaml_losses), label="first-order MAML: query loss after one step")
ax.plot(smooth(transfer_losses), label="transfer: joint regression loss")
ax.set_xlabel("meta-iteration")
ax.set_ylabel(f"MSE (mean of {window} iterations)")
ax.set_yscale("log")
ax.legend()
plt.show()


# %% [markdown]
# ## Held-out tasks: fine-tuning from each starting point
#
# Every method is fine-tuned the same way on each held-out task: plain SGD with
# learning rate 0.01 on its 10 support points, for 10 steps (`memmaml.batched_evaluate`,
# which adapts every task from the network's weights and measures it after each step;
# nothing in it is specific to MAML). The error is the MSE on the task's 100 query
# points, drawn uniformly on [-5, 5]: an estimate of the error over the whole curve.


# %%
methods = {"MAML": maml_net, "first-order MAML": fomaml_net, "transfer": transfer_net, "random init": random_net}
errors = {name: memmaml.batched_evaluate(net, mse_loss, held_out, memmaml.SGD(INNER_LR),
                                         steps=range(FINE_TUNE_STEPS + 1))["loss"].numpy()
          for name, net in methods.items()}

rows = ["| method | MSE, 0 steps | 1 step | 10 steps |", "|---|---:|---:|---:|"]
for name, e in errors.items():
    cells = [f"{e[:, s].mean():.3f} ± {1.96 * e[:, s].std(ddof=1) / math.sqrt(EVAL_TASKS):.3f}" for s in (0, 1, 10)]
    rows.append(f"| {name} | " + " | ".join(cells) + " |")
display(Markdown(f"Mean MSE over {EVAL_TASKS} held-out tasks (± 95% confidence interval of the mean)\n\n"
                 + "\n".join(rows)))


# %%
fig, ax = plt.subplots(figsize=(7, 4))
for name, e in errors.items():
    mean = e.mean(0)
    half = 1.96 * e.std(0, ddof=1) / math.sqrt(EVAL_TASKS)
    ax.plot(mean, "o-", ms=3, label=name)
    ax.fill_between(range(FINE_TUNE_STEPS + 1), mean - half, mean + half, alpha=0.2)
ax.set_xlabel("SGD steps on the 10 support points")
ax.set_ylabel(f"MSE on {EVAL_POINTS} points of the curve")
ax.set_yscale("log")
ax.legend()
ax.set_title(f"{EVAL_TASKS} held-out sine waves")
plt.show()

task = held_out.select(0)
order = task.query[0].squeeze(1).argsort()
x_grid = torch.linspace(-5, 5, 200).unsqueeze(1)
fig, axes = plt.subplots(1, 4, figsize=(16, 3.6), sharey=True)
for ax, (name, net) in zip(axes, methods.items()):
    fine_tune = memmaml.MAML(net, mse_loss, memmaml.SGD(INNER_LR))
    ax.plot(task.query[0][order], task.query[1][order], "k-", lw=2, label="true sine")
    for step, style in ((0, ":"), (1, "--"), (FINE_TUNE_STEPS, "-")):
        adapted = net if step == 0 else fine_tune([task.support] * step, first_order=True).model
        with torch.no_grad():
            ax.plot(x_grid, adapted(x_grid), style, label=f"after {step} step{'s' if step != 1 else ''}")
    ax.plot(*task.support, "^", color="C3", label="support points")
    ax.set_title(name)
    ax.set_xlabel("x")
axes[0].legend(fontsize=8)
fig.suptitle(f"A held-out task: the fitted curves, and the true one through its {EVAL_POINTS} query points")
fig.tight_layout()
plt.show()


# %% [markdown]
# ## Second order against first order: wall time per meta-iteration
#
# The training loops above also recorded their time per meta-iteration, but they ran
# one after the other, so a change in the machine's load between them would bias the
# comparison. Here both trainers compute meta-gradients on the same batches of tasks,
# alternating (and alternating which goes first); a meta-iteration here is the inner
# step and the meta-backward pass for 25 tasks (`MetaTrainer.compute_meta_gradient`,
# without the Adam step).


# %%
trainers = {False: maml_trainer, True: fomaml_trainer}
timing_generator = torch.Generator().manual_seed(7)
timings = {False: [], True: []}
for i in tqdm(range(TIMING_ITERATIONS), desc="timing", mininterval=1):
    tasks = train_source.sample_batch(draw_seeds(timing_generator, META_BATCH))
    for first_order in ((False, True) if i % 2 == 0 else (True, False)):
        start = time.perf_counter()
        trainers[first_order].compute_meta_gradient(tasks)
        timings[first_order].append(time.perf_counter() - start)

second, first = np.median(timings[False]), np.median(timings[True])
train_second, train_first = np.median(maml_seconds), np.median(fomaml_seconds)
display(Markdown(
    "| | second order | first order | first order saves |\n|---|---:|---:|---:|\n"
    f"| alternating runs, median of {TIMING_ITERATIONS} | {1e3 * second:.1f} ms | {1e3 * first:.1f} ms | "
    f"{1 - first / second:.0%} |\n"
    f"| training loops above, median of {META_ITERATIONS} (includes building the tasks and the Adam step) | "
    f"{1e3 * train_second:.1f} ms | {1e3 * train_first:.1f} ms | {1 - train_first / train_second:.0%} |"))
print(f"Measured here: a first-order meta-iteration takes {first / second:.2f} times as long as a second-order "
      f"one, {1 - first / second:.0%} less time (the paper reports about 33% faster).")


# %% [markdown]
# ## Summary


# %%
after = {name: (e[:, 1].mean(), e[:, FINE_TUNE_STEPS].mean()) for name, e in errors.items()}
best_one = min(after, key=lambda n: after[n][0])
print(f"lowest MSE after one fine-tuning step: {best_one} ({after[best_one][0]:.3f}). All four:")
for name, (one, ten) in after.items():
    print(f"  {name:>17}: {one:.3f} after one step, {ten:.3f} after {FINE_TUNE_STEPS}")
print(f"first-order MAML, relative to MAML after one step: {after['first-order MAML'][0] / after['MAML'][0]:.2f}x "
      f"the MSE, in {first / second:.2f}x the time per meta-iteration")
print(f"quick mode: {QUICK}; whole notebook: {time.perf_counter() - NOTEBOOK_START:.0f} s")


# %% [markdown]
# What to compare with the paper: there, MAML's network fits a new sine wave from 10
# points in one step and keeps improving with more steps, while the pretrained network
# improves little. The pretrained network starts from the average of all tasks, which
# is not zero: with phases only in [0, π] it is a wave of amplitude
# E[A]·2/π ≈ 1.6, the dotted curve of the "transfer" panel. First-order MAML comes close
# to MAML for less computation in the paper; how close it comes here, after far fewer
# meta-iterations, is in the table and the summary above.
