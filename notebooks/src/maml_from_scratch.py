# %% [markdown]
# # MAML from scratch, in numpy
#
# MAML (Finn, Abbeel and Levine, 2017) looks for an initial parameter $\theta$ from which
# one gradient step on a handful of examples of a new task gives a good model for that
# task. To see exactly what that means we code it from scratch for the simplest model
# there is: binary classification with a single-layer network,
# $\hat y = \sigma(x^\top\theta)$, on random inputs. Nothing but numpy is used for the
# algorithm itself.
#
# The first part follows the classic nineteen steps of MAML from scratch, in order. The
# second part goes further: it derives the exact (second-order) meta-gradient of this
# model in closed form, shows that the nineteen steps compute its first-order
# approximation, checks both against `memmaml.MAML` in float64, and shows on new
# tasks that the meta-learned $\theta$ adapts better than a random one.
#
# Everything runs on a CPU (no GPU is needed). The outputs stored in this file come from
# a full run by `python notebooks/build.py --execute`; the next cell prints the machine.


# %%
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

with warnings.catch_warnings():  # text progress bars without ipywidgets, and no warning about it
    warnings.filterwarnings("ignore", message="IProgress not found")
    from tqdm.auto import tqdm

QUICK = quick_mode()  # MEMMAML_NOTEBOOK_QUICK=1 (the test suite): every cell runs, on much smaller sizes
EPOCHS = 300 if QUICK else 10_000     # meta-training epochs of the nineteen steps
NEW_TASKS = 50 if QUICK else 1000     # new tasks that score the meta-learned starting points
NOTEBOOK_START = time.perf_counter()
print(f"quick mode: {QUICK}; {EPOCHS} epochs, {NEW_TASKS} new tasks; "
      f"device: cpu ({os.cpu_count()} cores)")


# %% [markdown]
# ## The tasks
#
# Every task is a binary classification problem on $d = 50$ random features drawn
# uniformly from $[0, 1]$. Task $t$ labels a point by the side of a hyperplane it falls
# on, $y = [x^\top w_t > 0]$, with $w_t = w_0 + \gamma_t \mathbf{1}$: all tasks share the
# direction $w_0$ (with $\sum_j w_{0j} = 0$), and each has its own offset $\gamma_t$, so
# each task puts its boundary somewhere else along $w_0$.
#
# If labels were drawn at random, independently of the inputs, no initial $\theta$
# could be better than another on a new task and there would be nothing to
# meta-learn; here the shared direction is what MAML can discover, and the offset is
# what one gradient step on $k$ examples has to adapt.


# %%
NUM_FEATURES = 50
OFFSET_SPREAD = 0.15  # standard deviation of a task's offset gamma_t

structure = np.random.default_rng(2017)
w0 = structure.normal(size=(NUM_FEATURES, 1))
w0 -= w0.mean()                          # orthogonal to the all-ones direction
w0 *= 10 / np.linalg.norm(w0)


def sample_task(rng):
    """A new task: the normal vector w_t of its hyperplane."""
    return w0 + OFFSET_SPREAD * rng.normal() * np.ones((NUM_FEATURES, 1))


def sample_points(w_task, k, rng):
    """k labelled points of the task with normal vector w_task."""
    x = rng.random((k, NUM_FEATURES))
    y = (x @ w_task > 0).astype(float)
    return x, y


rng = np.random.default_rng(0)
x, y = sample_points(sample_task(rng), 1000, rng)
print(f"one task, 1000 points: {y.mean():.0%} positive")


# %% [markdown]
# ## The nineteen steps
#
# 1. initialise the number of tasks in each batch of tasks;
# 2. the number of shots $k$: data points per task;
# 3. the number of epochs (training iterations);
# 4. the inner-loop learning rate $\alpha$;
# 5. the outer-loop (meta) learning rate $\beta$;
# 6. a random initial model parameter $\theta$;
# 7. the sigmoid activation;
# 8. training:
# 9. for each epoch,
# 10. for task $i$ in the batch of tasks,
# 11. sample $k$ data points of the task: its train set;
# 12. the cross-entropy loss of the network on them,
#     $L(\theta) = -\frac1k \sum_j y_j \log \hat y_j + (1 - y_j)\log(1 - \hat y_j)$;
# 13. its gradient, $\nabla L(\theta) = \frac1k X^\top (\hat y - y)$;
# 14. one gradient step gives the task's parameter $\theta'_i = \theta - \alpha \nabla L_i^{train}(\theta)$;
# 15. initialise the meta-gradient;
# 16. sample $k$ fresh data points of each task: its test set;
# 17. predict their labels with $\theta'_i$;
# 18. the meta-gradient: the gradient of the test loss at $\theta'_i$;
# 19. update $\theta$ with the meta-gradient averaged over the tasks:
#     $\theta \leftarrow \theta - \frac{\beta}{n_{tasks}} \sum_i g_i$.
#
# Step 18 is written as a method, `task_meta_gradient`, so that the second-order
# version below can replace just that step.


# %%
def cross_entropy(y_hat, y):
    return (-(y.T @ np.log(y_hat)) - (1 - y).T @ np.log(1 - y_hat)).item() / len(y)


class MAML:
    """MAML for a single-layer network, one inner gradient step per task."""

    def __init__(self, seed=0):
        # 1. number of tasks in each batch of tasks
        self.num_tasks = 10
        # 2. number of shots: data points k per task
        self.num_samples = 10
        # 3. number of epochs (training iterations)
        self.epochs = EPOCHS
        # 4. inner-loop learning rate alpha
        self.alpha = 1.0
        # 5. outer-loop (meta) learning rate beta
        self.beta = 1.0
        # 6. randomly initialise the model parameter theta
        self.theta = np.random.default_rng(seed).normal(size=(NUM_FEATURES, 1))

    # 7. the sigmoid activation
    @staticmethod
    def sigmoid(a):
        return 1.0 / (1.0 + np.exp(-a))

    # 8. training
    def train(self, rng):
        """Meta-trains theta; per epoch, the mean train loss before and test loss after adaptation."""
        train_losses, test_losses = [], []
        # 9. for the number of epochs
        for epoch in tqdm(range(self.epochs), desc=type(self).__name__, mininterval=1):
            tasks, theta_prime, epoch_train_losses = [], [], []
            # 10. for task i in the batch of tasks
            for i in range(self.num_tasks):
                w_task = sample_task(rng)
                # 11. sample k data points: the train set of task i
                x_train, y_train = sample_points(w_task, self.num_samples, rng)
                # 12. predict and compute the cross-entropy loss
                y_hat = self.sigmoid(x_train @ self.theta)
                epoch_train_losses.append(cross_entropy(y_hat, y_train))
                # 13. the gradient of the loss with respect to theta
                gradient = x_train.T @ (y_hat - y_train) / self.num_samples
                # 14. one gradient step: the optimal parameter theta' of task i
                theta_prime.append(self.theta - self.alpha * gradient)
                tasks.append((w_task, x_train, y_train))
            # 15. initialise the meta-gradient
            meta_gradient = np.zeros_like(self.theta)
            epoch_losses = []
            for i in range(self.num_tasks):
                w_task, x_train, y_train = tasks[i]
                # 16. sample k fresh data points of task i: its test set
                x_test, y_test = sample_points(w_task, self.num_samples, rng)
                # 17. predict y with theta'_i
                y_pred = self.sigmoid(x_test @ theta_prime[i])
                epoch_losses.append(cross_entropy(y_pred, y_test))
                # 18. the meta-gradient of task i
                meta_gradient += self.task_meta_gradient(x_train, y_train, x_test, y_test, y_pred)
            # 19. update theta with the meta-gradient
            self.theta = self.theta - self.beta * meta_gradient / self.num_tasks
            train_losses.append(np.mean(epoch_train_losses))
            test_losses.append(np.mean(epoch_losses))
        return np.array(train_losses), np.array(test_losses)

    def task_meta_gradient(self, x_train, y_train, x_test, y_test, y_pred):
        # the gradient of the test loss at theta'_i
        return x_test.T @ (y_pred - y_test) / self.num_samples


# %%
first_order = MAML(seed=0)
theta_random = first_order.theta.copy()  # the random initial theta, kept for comparison
first_order_before, first_order_losses = first_order.train(np.random.default_rng(1))
print(f"test loss after adaptation, mean of the last 100 epochs: {first_order_losses[-100:].mean():.3f} "
      f"(first 100 epochs: {first_order_losses[:100].mean():.3f}); train loss before adaptation, "
      f"last 100 epochs: {first_order_before[-100:].mean():.3f}")


# %% [markdown]
# ## The exact meta-gradient
#
# What MAML minimises is the test loss of the adapted parameter as a function of the
# initial one, $L^{test}_i(\theta'_i(\theta))$ with
# $\theta'_i(\theta) = \theta - \alpha \nabla L^{train}_i(\theta)$. By the chain rule its
# gradient is
#
# $$\nabla_\theta\, L^{test}_i(\theta'_i) = \Big(\frac{\partial \theta'_i}{\partial \theta}\Big)^{\!\top}
#   \nabla L^{test}_i(\theta'_i) = \big(I - \alpha\, H^{train}_i(\theta)\big)\, \nabla L^{test}_i(\theta'_i),$$
#
# where $H^{train}_i$ is the Hessian of the train loss (symmetric, so the transpose
# goes away). For logistic regression it has a closed form: with
# $\hat y = \sigma(X\theta)$ and $\sigma' = \sigma(1 - \sigma)$,
#
# $$\nabla L(\theta) = \tfrac1k X^\top(\hat y - y), \qquad
#   H(\theta) = \tfrac1k X^\top \operatorname{diag}\big(\hat y\,(1 - \hat y)\big)\, X .$$
#
# Step 18 above computes only $\nabla L^{test}_i(\theta'_i)$: it drops the term
# $-\alpha H^{train}_i \nabla L^{test}_i(\theta'_i)$, which is *first-order MAML*
# (Finn et al. call it the first-order approximation). The approximation is good when
# $\alpha H$ is small; here $\alpha = 1$ and it is not negligible.
#
# With $n$ inner steps $\theta_{j+1} = \theta_j - \alpha \nabla L^{train}(\theta_j)$ the
# Jacobian is a product, and the meta-gradient is
# $(I - \alpha H_0)(I - \alpha H_1)\cdots(I - \alpha H_{n-1}) \nabla L^{test}(\theta_n)$: a
# backward pass through the inner loop, one Hessian-vector product per step.


# %%
def loss_gradient(theta, x, y):
    return x.T @ (MAML.sigmoid(x @ theta) - y) / len(y)


def loss_hessian(theta, x, y):
    p = MAML.sigmoid(x @ theta)
    return x.T @ (p * (1 - p) * x) / len(y)


def exact_meta_gradient(theta, tasks, alpha, num_steps=1, second_order=True):
    """Mean over tasks of d L_test(theta_n) / d theta after num_steps inner gradient steps."""
    total = np.zeros_like(theta)
    for x_train, y_train, x_test, y_test in tasks:
        thetas = [theta]
        for _ in range(num_steps):
            thetas.append(thetas[-1] - alpha * loss_gradient(thetas[-1], x_train, y_train))
        g = loss_gradient(thetas[-1], x_test, y_test)
        if second_order:
            for theta_j in reversed(thetas[:-1]):
                g = g - alpha * loss_hessian(theta_j, x_train, y_train) @ g
        total += g
    return total / len(tasks)


class SecondOrderMAML(MAML):
    """The same nineteen steps with the exact meta-gradient in step 18."""

    def task_meta_gradient(self, x_train, y_train, x_test, y_test, y_pred):
        g = super().task_meta_gradient(x_train, y_train, x_test, y_test, y_pred)
        return g - self.alpha * loss_hessian(self.theta, x_train, y_train) @ g


# %% [markdown]
# ## Checking both against memmaml
#
# `memmaml.MAML` differentiates through the inner loop with PyTorch's autograd
# instead of a formula. The same network is `torch.nn.Linear(50, 1, bias=False)` with
# weight $\theta^\top$, and the same loss is `binary_cross_entropy_with_logits`. On the
# same batch of tasks and the same random $\theta$, in float64, the meta-gradients must
# agree to 1e-8: with `first_order=False` the exact one, with `first_order=True` step
# 18's. The naive engine (`schedule=None`, every step's graph kept) and the checkpointed
# one (`schedule="uniform:2"`: segments of 2 steps, replayed in the backward pass) must
# both give them.


# %%
check_rng = np.random.default_rng(3)
alpha = first_order.alpha
tasks = []
for _ in range(first_order.num_tasks):
    w_task = sample_task(check_rng)
    tasks.append((*sample_points(w_task, 10, check_rng), *sample_points(w_task, 10, check_rng)))

net = torch.nn.Linear(NUM_FEATURES, 1, bias=False, dtype=torch.float64)


def bce(model, batch):
    x, y = batch
    return F.binary_cross_entropy_with_logits(model(x), y)


engines = {
    "naive (`schedule=None`)": memmaml.MAML(net, bce, memmaml.SGD(alpha)),
    'checkpointed (`schedule="uniform:2"`)': memmaml.MAML(net, bce, memmaml.SGD(alpha), schedule="uniform:2"),
}
torch_tasks = [tuple(torch.from_numpy(a) for a in task) for task in tasks]

rows = ["| inner steps | meta-gradient | engine | max abs difference to numpy |", "|---:|---|---|---:|"]
worst = 0.0
for num_steps in (1, 5):
    for second_order in (True, False):
        expected = exact_meta_gradient(theta_random, tasks, alpha, num_steps, second_order)
        for engine_name, maml in engines.items():
            with torch.no_grad():
                net.weight.copy_(torch.from_numpy(theta_random.T))
            net.zero_grad()
            for x_train, y_train, x_test, y_test in torch_tasks:
                result = maml([(x_train, y_train)] * num_steps, first_order=not second_order)
                (bce(result.model, (x_test, y_test)) / len(torch_tasks)).backward()
            difference = np.abs(net.weight.grad.numpy().T - expected).max()
            worst = max(worst, difference)
            rows.append(f"| {num_steps} | {'exact' if second_order else 'first order'} | {engine_name} | "
                        f"{difference:.2e} |")
display(Markdown("\n".join(rows)))

exact = exact_meta_gradient(theta_random, tasks, alpha)
approximate = exact_meta_gradient(theta_random, tasks, alpha, second_order=False)
print(f"one step: |exact - first order| = {np.linalg.norm(exact - approximate):.3f}, "
      f"|exact| = {np.linalg.norm(exact):.3f}, cosine = "
      f"{(exact.T @ approximate).item() / np.linalg.norm(exact) / np.linalg.norm(approximate):.3f}")
assert worst < 1e-8, worst
print(f"OK: numpy and memmaml agree to {worst:.1e}")


# %% [markdown]
# ## Training with the exact meta-gradient
#
# `SecondOrderMAML` runs the same nineteen steps, on the same stream of tasks from the
# same random $\theta$, with the exact meta-gradient in step 18.


# %%
second_order = SecondOrderMAML(seed=0)
second_order_before, second_order_losses = second_order.train(np.random.default_rng(1))
print(f"test loss after adaptation, mean of the last 100 epochs: {second_order_losses[-100:].mean():.3f}; "
      f"train loss before adaptation, last 100 epochs: {second_order_before[-100:].mean():.3f}")

window = max(1, EPOCHS // 100)


def smooth(values):
    return np.convolve(values, np.ones(window) / window, mode="valid")


fig, ax = plt.subplots(figsize=(7, 4))
ax.plot(smooth(first_order_losses), label="first order (the nineteen steps)")
ax.plot(smooth(second_order_losses), label="exact meta-gradient")
ax.set_yscale("log")
ax.set_xlabel("epoch")
ax.set_ylabel(f"test loss after one step (mean of {window} epochs)")
ax.legend()
plt.show()


# %% [markdown]
# ## Does the meta-learned $\theta$ adapt better?
#
# On new tasks, never seen in training, each starting point takes up to ten gradient
# steps with $\alpha$ on $k = 10$ examples, and is scored on 100 fresh points of the same
# task. Training used one step; more steps are a free extra at test time.


# %%
MAX_STEPS = 10


def adaptation_curve(theta, num_tasks, rng):
    losses = np.zeros((num_tasks, MAX_STEPS + 1))
    accuracies = np.zeros((num_tasks, MAX_STEPS + 1))
    for t in range(num_tasks):
        w_task = sample_task(rng)
        x_train, y_train = sample_points(w_task, 10, rng)
        x_test, y_test = sample_points(w_task, 100, rng)
        adapted = theta
        for step in range(MAX_STEPS + 1):
            y_pred = MAML.sigmoid(x_test @ adapted)
            losses[t, step] = cross_entropy(y_pred, y_test)
            accuracies[t, step] = np.mean((y_pred > 0.5) == y_test)
            adapted = adapted - alpha * loss_gradient(adapted, x_train, y_train)
    return losses, accuracies


starts = {"random theta": theta_random, "MAML, first order": first_order.theta,
          "MAML, exact meta-gradient": second_order.theta}
curves = {name: adaptation_curve(theta, NEW_TASKS, np.random.default_rng(99)) for name, theta in starts.items()}

fig, axes = plt.subplots(1, 2, figsize=(11, 4))
for name, (losses, accuracies) in curves.items():
    axes[0].plot(losses.mean(0), "o-", ms=3, label=name)
    axes[1].plot(accuracies.mean(0), "o-", ms=3, label=name)
axes[0].set_ylabel("test cross-entropy")
axes[1].set_ylabel("test accuracy")
for ax in axes:
    ax.set_xlabel("gradient steps on the 10 examples of a new task")
axes[0].legend()
fig.suptitle(f"Adapting to {NEW_TASKS} new tasks")
plt.show()

rows = ["| start | loss, 0 steps | 1 step | 10 steps | accuracy, 0 steps | 1 step | 10 steps |",
        "|---|---:|---:|---:|---:|---:|---:|"]
for name, (losses, accuracies) in curves.items():
    rows.append(f"| {name} | " + " | ".join(f"{losses.mean(0)[s]:.3f}" for s in (0, 1, 10)) + " | "
                + " | ".join(f"{accuracies.mean(0)[s]:.1%}" for s in (0, 1, 10)) + " |")
display(Markdown("\n".join(rows)))


def cosine(a, b):
    return (a.T @ b).item() / np.linalg.norm(a) / np.linalg.norm(b)


print("cosine with the shared direction w0: "
      + ", ".join(f"{name} {cosine(theta, w0):.2f}" for name, theta in starts.items()))


# %% [markdown]
# Things to notice in the figure and the table:
#
# * The random $\theta$ points in no useful direction; gradient steps on ten examples
#   help it a little and then stall. The meta-learned $\theta$ points along the shared
#   direction $w_0$ (the cosines above), and one step on ten examples moves the
#   boundary to the task.
# * What MAML optimises is the loss *after* adaptation, not before: its $\theta$ need not
#   be good for any task as it stands, and the exact and the first-order versions can
#   differ more before adaptation than after it.


# %%
print(f"quick mode: {QUICK}; whole notebook: {time.perf_counter() - NOTEBOOK_START:.0f} s")
