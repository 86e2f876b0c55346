"""Write the three memmaml notebooks from their cell sources, and optionally run them.

The notebooks in this folder are generated here so that their code stays reviewable
as plain Python. Running them stores their outputs in the ``.ipynb`` files:

    python notebooks/build_notebooks.py             # write the notebooks (no outputs)
    python notebooks/build_notebooks.py --execute   # write them, run them top to bottom, store outputs
    python notebooks/build_notebooks.py --execute --only sine_wave_maml

``--execute`` runs each notebook with nbclient in its full size (the
``MEMMAML_NOTEBOOK_QUICK`` environment variable is removed for the run); the
test suite runs them in quick mode instead (tests/test_notebooks.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from textwrap import dedent

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

# owner/name of the repository on GitHub: the Colab badge and the install cell both use it
GITHUB_REPOSITORY = "memmaml/memmaml"
BRANCH = "main"


def md(text: str):
    return new_markdown_cell(dedent(text).strip("\n"))


def code(text: str):
    return new_code_cell(dedent(text).strip("\n"))


def notebook(cells, *, colab_gpu: bool = False):
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python", "pygments_lexer": "ipython3"}
    if colab_gpu:
        nb.metadata["accelerator"] = "GPU"
        nb.metadata["colab"] = {"provenance": [], "gpuType": "T4"}
    return nb


QUICK_CELL_NOTE = "# The test suite sets MEMMAML_NOTEBOOK_QUICK=1: every cell runs, on much smaller sizes.\n"


def quick_code(text: str):
    """A code cell that reads the quick-mode switch, with a comment saying so."""
    return new_code_cell(QUICK_CELL_NOTE + dedent(text).strip("\n"))

# ============================================================================ the Colab demo
def colab_demo():
    badge = (f"https://colab.research.google.com/github/{GITHUB_REPOSITORY}/blob/{BRANCH}"
             "/notebooks/memory_efficient_maml.ipynb")
    cells = [
        md(f"""
        # Memory-efficient MAML: backpropagating through hundreds of inner steps

        [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({badge})

        MAML adapts a model with a few optimizer steps on a task (the *inner loop*) and
        then differentiates the loss of the adapted model with respect to the initial
        weights (the *meta-gradient*). Differentiating through the inner loop normally
        keeps the autograd graph of every inner step alive, so memory grows with the
        number of steps: with ResNet-18 on a batch of 16 images of 224×224, an 11 GB GPU
        holds only about ten to fourteen steps.

        `memmaml.GradientCheckpointMAML` keeps the inner loop's state only at the start of
        every segment of `checkpoint_steps` steps and replays one segment at a time in the
        backward pass. The meta-gradient is the same as the naive one; memory is about
        `ceil(n / k)` stored states plus `k` steps' graphs instead of `n` steps' graphs.

        This notebook shows it on the setting of the original demo:

        * **Data**: random tensors of shape (batch, 3, H, W) with random labels
        * **Model**: ResNet-18 (randomly initialised, nothing is downloaded)
        * **Inner optimizer**: SGD with learning rate 0.01; meta-gradients clipped through
          the unroll with `max_grad_grad_norm=1e2`
        * **Sizes**: batch 16 at 224×224 and 100 to 500 inner steps on a GPU; smaller
          images, batch and step counts on a CPU (one cell below chooses them)

        **About the stored outputs.** The outputs saved in this file come from a run on a
        2-core CPU with no GPU available, so they use the CPU sizes of the configuration
        cell (batch 4 at 64×64); memory figures are the live-tensor bytes counted by
        `memmaml.track_memory("cpu")`. Run it on Colab with a GPU runtime for the full
        224×224 setting.
        """),
        code(f"""
        # Where memmaml is installed from when it is missing (Colab): a git URL, a PyPI name or a local path.
        MEMMAML_SOURCE = "git+https://github.com/{GITHUB_REPOSITORY}.git"

        import importlib.util
        import subprocess
        import sys

        if importlib.util.find_spec("memmaml") is None:
            subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", MEMMAML_SOURCE], check=True)
        else:
            print("memmaml is already installed; nothing to do")
        """),
        code("""
        import math
        import os
        import time
        import warnings

        import matplotlib.pyplot as plt
        import numpy as np
        import torch
        import torch.nn.functional as F
        import torchvision
        from IPython.display import Markdown, display

        warnings.filterwarnings("ignore", message="IProgress not found")  # text progress bars without ipywidgets
        from tqdm.auto import tqdm

        import memmaml

        print(f"memmaml {memmaml.__version__}, torch {torch.__version__}, torchvision {torchvision.__version__}")
        """),
        md("""
        ## Configuration

        One cell chooses every size. On a GPU it is the original demo's setting; on a CPU the
        images, the batch and the step counts are smaller so that the notebook finishes in a
        few minutes. The code below is the same for both.

        `NAIVE_MAX_STEPS` bounds the naive runs on a CPU, where running out of memory would
        take the whole machine down rather than raise a clean error; larger step counts are
        extrapolated and marked as such. On a GPU every count is tried and an out-of-memory
        error is caught and shown.
        """),
        quick_code("""
        QUICK = os.environ.get("MEMMAML_NOTEBOOK_QUICK", "0") not in ("", "0")
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
        """),
        md("""
        ## Model, loss and data

        `loss_function(model, batch)` is all memmaml needs: it is called with a model that
        computes with the adapted weights and must return a scalar. The meta-parameters are
        the ResNet's own parameters; after `query_loss.backward()` their `.grad` holds the
        meta-gradient.
        """),
        code("""
        model = torchvision.models.resnet18(weights=None, num_classes=NUM_CLASSES).to(DEVICE)  # random init, no download


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
            \"\"\"Inner loop, query loss and its backward pass; returns (result, grads, peak bytes, seconds).\"\"\"
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
        """),
        md("""
        ## 1. Sanity check: the checkpointed meta-gradient equals the naive one

        First a step count that naive MAML can hold. Both engines run the same inner steps
        on the same batch; the checkpointed one uses segments of 2 steps, so its replay
        crosses segment boundaries (and the last segment is shorter when the count is odd).

        ResNet-18 has BatchNorm: in train mode each inner step updates the running
        statistics. The checkpointed engine must update them once per step, like the naive
        loop, and never again during its replay, so both runs start from the same
        statistics and must end with the same ones.
        """),
        code("""
        naive = memmaml.NaiveMAML(model, loss_function, memmaml.SGD(LEARNING_RATE))
        checkpointed = memmaml.GradientCheckpointMAML(model, loss_function, memmaml.SGD(LEARNING_RATE), checkpoint_steps=2)
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
        """),
        md("""
        ## 2. Peak memory of both engines, side by side

        Each step count runs the inner loop, the query loss and the meta-backward pass once
        per engine and records the peak memory of live tensors (on a GPU, the CUDA caching
        allocator's count; on a CPU, the bytes of tensor storages alive at once). Naive MAML
        grows by one step's graph per step; the checkpointed engine stores one state (a copy
        of the weights) per segment and one segment's graph at a time.

        On a GPU, an out-of-memory error is caught and recorded; larger counts are then
        skipped for the naive engine.

        At a handful of steps the checkpointed engine can need *more* memory than the naive
        one (as in the check above): it keeps copies of the state at segment starts, and on
        small images one step's graph is not much larger than a copy of the weights. Its
        advantage grows with the number of steps.
        """),
        code("""
        checkpointed = memmaml.GradientCheckpointMAML(model, loss_function, memmaml.SGD(LEARNING_RATE),
                                                      checkpoint_steps=CHECKPOINT_STEPS)
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

        table = ["| inner steps | naive peak | checkpointed peak (segments of %d) | naive time | checkpointed time |"
                 % CHECKPOINT_STEPS, "|---:|---:|---:|---:|---:|"]
        for r in rows:
            if "naive_bytes" in r:
                naive_cell, naive_time = f"{gib(r['naive_bytes']):.2f} GiB", f"{r['naive_seconds']:.1f} s"
            elif r["naive"] == "not run" and slope is not None:
                naive_cell, naive_time = f"≈ {gib(slope * r['steps'] + intercept):.1f} GiB (extrapolated, not run)", "–"
            else:
                naive_cell, naive_time = r["naive"], "–"
            table.append(f"| {r['steps']} | {naive_cell} | {gib(r['ckpt_bytes']):.2f} GiB | {naive_time} | "
                         f"{r['ckpt_seconds']:.1f} s |")
        display(Markdown("\\n".join(table)))
        if slope is not None:
            best = math.sqrt(max(MEMORY_STEPS) * STATE_BYTES / slope)
            print(f"one naive inner step holds about {slope / 2**20:.0f} MiB; one stored state is {STATE_BYTES / 2**20:.0f} MiB")
            print(f"memory ~ (n / k) * state + k * step is smallest at k = sqrt(n * state / step) = {best:.1f} "
                  f"for n = {max(MEMORY_STEPS)}")
        """),
        code("""
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
        """),
        md("""
        ## 3. A hundred inner steps and beyond, with the checkpointed engine

        Now the long unrolls naive MAML cannot hold on a small GPU. `progress=True` shows the
        inner loop's forward pass and the replay during the backward pass. The inner loss
        (before each step) goes down as SGD fits the fixed random batch.
        """),
        code("""
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
        """),
        md("""
        ## 4. A different batch at every inner step

        `inputs` is a list with one batch per inner step, so the inner loop can be stochastic
        gradient descent over a stream of batches instead of full-batch descent on one.
        With fresh random labels at every step there is nothing to fit: the loss stays near
        log(10) ≈ 2.3 and fluctuates from batch to batch.
        """),
        code("""
        stream = [random_batch() for _ in range(OTHER_STEPS)]
        result, grads, peak, seconds = meta_gradient(checkpointed, stream)
        stream_history = torch.stack(result.loss_history).detach().cpu()
        print(f"{OTHER_STEPS} steps on {OTHER_STEPS} different batches: {seconds:.1f} s, peak {gib(peak):.2f} GiB")
        del result, grads
        """),
        md("""
        ## 5. RMSProp, with a learnable learning rate

        Any memmaml in-graph optimizer can run the inner loop: `memmaml.SGD` (momentum,
        Nesterov, weight decay), `memmaml.RMSProp`, `memmaml.Adam`, and the names of the
        predecessor package, `memmaml.IngraphGradientDescent` and `memmaml.IngraphRMSProp`.
        A hyperparameter given as a tensor with `requires_grad=True` receives a
        meta-gradient, here the inner learning rate.
        """),
        code("""
        inner_lr = torch.tensor(1e-4, device=DEVICE, requires_grad=True)
        rmsprop = memmaml.GradientCheckpointMAML(model, loss_function, memmaml.RMSProp(inner_lr, alpha=0.99, momentum=0.9),
                                                 checkpoint_steps=CHECKPOINT_STEPS)
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
        """),
        md("""
        RMSProp's state holds two more tensors per weight than plain SGD's (the average of
        squared gradients and the momentum buffer), and each of its steps adds more
        element-wise operations to the graph, so both the stored states and a segment's
        graph are larger: compare the peak memory with the SGD run on different batches
        above, which has the same number of steps.
        """),
        md("""
        ## Tips

        **BatchNorm.** In train mode BatchNorm normalises with the statistics of the current
        batch, so the inner loop and the meta-gradient see batch statistics, and it updates
        its running statistics in place at every inner step. memmaml updates them once per
        inner step in both engines (replays run on copies), so a checkpointed run leaves the
        same running statistics as a naive one. They are shared by every task adapted from
        the same model; if that leaks information between tasks, build the model with
        `track_running_stats=False`, or save and restore the buffers around each task. In
        eval mode the running statistics are used and nothing is updated.

        **Clipping.** `max_grad_grad_norm` is not a clip of the final meta-gradient: at every
        inner step it clips the cotangent flowing back into that step's new parameters to
        that global L2 norm. The forward pass is unchanged. Long unrolls can multiply the
        backward signal by the same Jacobian hundreds of times; clipping at every step keeps
        it finite. Both engines clip at the same places, so they still agree. Clip the final
        meta-gradient separately with `torch.nn.utils.clip_grad_norm_` if you want that too.

        **Determinism.** On a CPU, replays recompute exactly what the first pass computed, and
        the meta-gradients of the two engines agree to rounding. On a GPU some kernels are
        non-deterministic (cuDNN's algorithm search and atomic additions in some backward
        kernels), so a replayed segment can differ from the first pass in the last bits and
        long unrolls drift. Set `torch.backends.cudnn.benchmark = False` and
        `torch.backends.cudnn.deterministic = True` (as this notebook does), or go further with
        `torch.use_deterministic_algorithms(True)` and the environment variable
        `CUBLAS_WORKSPACE_CONFIG=:4096:8`. Random numbers are taken care of: every stored
        state keeps the CPU and CUDA random-number-generator states, and replays restore them
        (`preserve_rng_state=True`, the default), so dropout and random augmentation inside
        the loss see the same numbers twice.

        **Choosing the segment length.** Memory is about `(n / k) * state + k * step`, which is
        smallest at `k = sqrt(n * state / step)`. For ResNet-18 on 224×224 images one step's
        graph is much larger than a copy of the weights, so short segments (about 5) win; on
        small images the two are closer and longer segments do as well. Every step runs twice
        (once without a graph in the forward pass, once with it in the replay), whatever `k`.

        **First order.** `first_order=True` treats the inner gradients as constants: no
        second-order graph is built and the meta-gradient is the query gradient at the
        adapted weights. It is cheaper and often almost as good (see the sine-wave notebook).
        """),
        code("""
        print(f"quick mode: {QUICK}; device: {DEVICE}; batch {BATCH_SIZE} at {IMAGE_SIZE}x{IMAGE_SIZE}")
        print(f"torch {torch.__version__}; whole notebook: {time.perf_counter() - NOTEBOOK_START:.0f} s")
        """),
    ]
    return notebook(cells, colab_gpu=True)


# ==================================================================== MAML from scratch
def from_scratch():
    cells = [
        md(r"""
        # MAML from scratch, in numpy

        MAML (Finn, Abbeel and Levine, 2017) looks for an initial parameter $\theta$ from which
        one gradient step on a handful of examples of a new task gives a good model for that
        task. To see exactly what that means we code it from scratch for the simplest model
        there is: binary classification with a single-layer network,
        $\hat y = \sigma(x^\top\theta)$, on random inputs. Nothing but numpy is used for the
        algorithm itself.

        The first part follows the classic nineteen steps of MAML from scratch, in order. The
        second part goes further: it derives the exact (second-order) meta-gradient of this
        model in closed form, shows that the nineteen steps compute its first-order
        approximation, checks both against `memmaml.NaiveMAML` in float64, and shows on new
        tasks that the meta-learned $\theta$ adapts better than a random one.

        The outputs stored in this file come from a run on a CPU (no GPU is needed).
        """),
        quick_code("""
        import os
        import time
        import warnings

        import matplotlib.pyplot as plt
        import numpy as np
        from IPython.display import Markdown, display

        warnings.filterwarnings("ignore", message="IProgress not found")  # text progress bars without ipywidgets
        from tqdm.auto import tqdm

        QUICK = os.environ.get("MEMMAML_NOTEBOOK_QUICK", "0") not in ("", "0")
        NOTEBOOK_START = time.perf_counter()
        print(f"quick mode: {QUICK}")
        """),
        md(r"""
        ## The tasks

        Every task is a binary classification problem on $d = 50$ random features drawn
        uniformly from $[0, 1]$. Task $t$ labels a point by the side of a hyperplane it falls
        on, $y = [x^\top w_t > 0]$, with $w_t = w_0 + \gamma_t \mathbf{1}$: all tasks share the
        direction $w_0$ (with $\sum_j w_{0j} = 0$), and each has its own offset $\gamma_t$, so
        each task puts its boundary somewhere else along $w_0$.

        If labels were drawn at random, independently of the inputs, no initial $\theta$
        could be better than another on a new task and there would be nothing to
        meta-learn; here the shared direction is what MAML can discover, and the offset is
        what one gradient step on $k$ examples has to adapt.
        """),
        code("""
        NUM_FEATURES = 50
        OFFSET_SPREAD = 0.15  # standard deviation of a task's offset gamma_t

        structure = np.random.default_rng(2017)
        w0 = structure.normal(size=(NUM_FEATURES, 1))
        w0 -= w0.mean()                          # orthogonal to the all-ones direction
        w0 *= 10 / np.linalg.norm(w0)


        def sample_task(rng):
            \"\"\"A new task: the normal vector w_t of its hyperplane.\"\"\"
            return w0 + OFFSET_SPREAD * rng.normal() * np.ones((NUM_FEATURES, 1))


        def sample_points(w_task, k, rng):
            \"\"\"k labelled points of the task with normal vector w_task.\"\"\"
            x = rng.random((k, NUM_FEATURES))
            y = (x @ w_task > 0).astype(float)
            return x, y


        rng = np.random.default_rng(0)
        x, y = sample_points(sample_task(rng), 1000, rng)
        print(f"one task, 1000 points: {y.mean():.0%} positive")
        """),
        md(r"""
        ## The nineteen steps

        1. initialise the number of tasks in each batch of tasks;
        2. the number of shots $k$: data points per task;
        3. the number of epochs (training iterations);
        4. the inner-loop learning rate $\alpha$;
        5. the outer-loop (meta) learning rate $\beta$;
        6. a random initial model parameter $\theta$;
        7. the sigmoid activation;
        8. training:
        9. for each epoch,
        10. for task $i$ in the batch of tasks,
        11. sample $k$ data points of the task: its train set;
        12. the cross-entropy loss of the network on them,
            $L(\theta) = -\frac1k \sum_j y_j \log \hat y_j + (1 - y_j)\log(1 - \hat y_j)$;
        13. its gradient, $\nabla L(\theta) = \frac1k X^\top (\hat y - y)$;
        14. one gradient step gives the task's parameter $\theta'_i = \theta - \alpha \nabla L_i^{train}(\theta)$;
        15. initialise the meta-gradient;
        16. sample $k$ fresh data points of each task: its test set;
        17. predict their labels with $\theta'_i$;
        18. the meta-gradient: the gradient of the test loss at $\theta'_i$;
        19. update $\theta$ with the meta-gradient averaged over the tasks:
            $\theta \leftarrow \theta - \frac{\beta}{n_{tasks}} \sum_i g_i$.

        Step 18 is written as a method, `task_meta_gradient`, so that the second-order
        version below can replace just that step.
        """),
        code("""
        EPOCHS = 300 if QUICK else 10_000


        def cross_entropy(y_hat, y):
            return (-(y.T @ np.log(y_hat)) - (1 - y).T @ np.log(1 - y_hat)).item() / len(y)


        class MAML:
            \"\"\"MAML for a single-layer network, one inner gradient step per task.\"\"\"

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
                test_losses = []
                # 9. for the number of epochs
                for epoch in tqdm(range(self.epochs), desc=type(self).__name__, mininterval=1):
                    tasks, theta_prime = [], []
                    # 10. for task i in the batch of tasks
                    for i in range(self.num_tasks):
                        w_task = sample_task(rng)
                        # 11. sample k data points: the train set of task i
                        x_train, y_train = sample_points(w_task, self.num_samples, rng)
                        # 12. predict and compute the cross-entropy loss
                        y_hat = self.sigmoid(x_train @ self.theta)
                        loss = cross_entropy(y_hat, y_train)
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
                    test_losses.append(np.mean(epoch_losses))
                return np.array(test_losses)

            def task_meta_gradient(self, x_train, y_train, x_test, y_test, y_pred):
                # the gradient of the test loss at theta'_i
                return x_test.T @ (y_pred - y_test) / self.num_samples
        """),
        code("""
        first_order = MAML(seed=0)
        theta_random = first_order.theta.copy()  # the random initial theta, kept for comparison
        first_order_losses = first_order.train(np.random.default_rng(1))
        print(f"test loss after adaptation, mean of the last 100 epochs: {first_order_losses[-100:].mean():.3f} "
              f"(first 100 epochs: {first_order_losses[:100].mean():.3f})")
        """),
        md(r"""
        ## The exact meta-gradient

        What MAML minimises is the test loss of the adapted parameter as a function of the
        initial one, $L^{test}_i(\theta'_i(\theta))$ with
        $\theta'_i(\theta) = \theta - \alpha \nabla L^{train}_i(\theta)$. By the chain rule its
        gradient is

        $$\nabla_\theta\, L^{test}_i(\theta'_i) = \Big(\frac{\partial \theta'_i}{\partial \theta}\Big)^{\!\top}
          \nabla L^{test}_i(\theta'_i) = \big(I - \alpha\, H^{train}_i(\theta)\big)\, \nabla L^{test}_i(\theta'_i),$$

        where $H^{train}_i$ is the Hessian of the train loss (symmetric, so the transpose
        goes away). For logistic regression it has a closed form: with
        $\hat y = \sigma(X\theta)$ and $\sigma' = \sigma(1 - \sigma)$,

        $$\nabla L(\theta) = \tfrac1k X^\top(\hat y - y), \qquad
          H(\theta) = \tfrac1k X^\top \operatorname{diag}\big(\hat y\,(1 - \hat y)\big)\, X .$$

        Step 18 above computes only $\nabla L^{test}_i(\theta'_i)$: it drops the term
        $-\alpha H^{train}_i \nabla L^{test}_i(\theta'_i)$, which is *first-order MAML*
        (Finn et al. call it the first-order approximation). The approximation is good when
        $\alpha H$ is small; here $\alpha = 1$ and it is not negligible.

        With $n$ inner steps $\theta_{j+1} = \theta_j - \alpha \nabla L^{train}(\theta_j)$ the
        Jacobian is a product, and the meta-gradient is
        $(I - \alpha H_0)(I - \alpha H_1)\cdots(I - \alpha H_{n-1}) \nabla L^{test}(\theta_n)$: a
        backward pass through the inner loop, one Hessian-vector product per step.
        """),
        code("""
        def loss_gradient(theta, x, y):
            return x.T @ (MAML.sigmoid(x @ theta) - y) / len(y)


        def loss_hessian(theta, x, y):
            p = MAML.sigmoid(x @ theta)
            return x.T @ (p * (1 - p) * x) / len(y)


        def exact_meta_gradient(theta, tasks, alpha, num_steps=1, second_order=True):
            \"\"\"Mean over tasks of d L_test(theta_n) / d theta after num_steps inner gradient steps.\"\"\"
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
            \"\"\"The same nineteen steps with the exact meta-gradient in step 18.\"\"\"

            def task_meta_gradient(self, x_train, y_train, x_test, y_test, y_pred):
                g = super().task_meta_gradient(x_train, y_train, x_test, y_test, y_pred)
                return g - self.alpha * loss_hessian(self.theta, x_train, y_train) @ g
        """),
        md(r"""
        ## Checking both against memmaml

        `memmaml.NaiveMAML` differentiates through the inner loop with PyTorch's autograd
        instead of a formula. The same network is `torch.nn.Linear(50, 1, bias=False)` with
        weight $\theta^\top$, and the same loss is `binary_cross_entropy_with_logits`. On the
        same batch of tasks and the same random $\theta$, in float64, the meta-gradients must
        agree to 1e-8: with `first_order=False` the exact one, with `first_order=True` step
        18's. `GradientCheckpointMAML` (segments of 2 steps) must give the same.
        """),
        code("""
        import torch
        import torch.nn.functional as F

        import memmaml

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
            "NaiveMAML": memmaml.NaiveMAML(net, bce, memmaml.SGD(alpha)),
            "GradientCheckpointMAML": memmaml.GradientCheckpointMAML(net, bce, memmaml.SGD(alpha), checkpoint_steps=2),
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
        display(Markdown("\\n".join(rows)))

        exact = exact_meta_gradient(theta_random, tasks, alpha)
        approximate = exact_meta_gradient(theta_random, tasks, alpha, second_order=False)
        print(f"one step: |exact - first order| = {np.linalg.norm(exact - approximate):.3f}, "
              f"|exact| = {np.linalg.norm(exact):.3f}, cosine = "
              f"{(exact.T @ approximate).item() / np.linalg.norm(exact) / np.linalg.norm(approximate):.3f}")
        assert worst < 1e-8, worst
        print(f"OK: numpy and memmaml agree to {worst:.1e}")
        """),
        md(r"""
        ## Training with the exact meta-gradient

        `SecondOrderMAML` runs the same nineteen steps, on the same stream of tasks from the
        same random $\theta$, with the exact meta-gradient in step 18.
        """),
        code("""
        second_order = SecondOrderMAML(seed=0)
        second_order_losses = second_order.train(np.random.default_rng(1))
        print(f"test loss after adaptation, mean of the last 100 epochs: {second_order_losses[-100:].mean():.3f}")

        window = max(1, EPOCHS // 100)
        smooth = lambda v: np.convolve(v, np.ones(window) / window, mode="valid")  # noqa: E731
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(smooth(first_order_losses), label="first order (the nineteen steps)")
        ax.plot(smooth(second_order_losses), label="exact meta-gradient")
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"test loss after one step (mean of {window} epochs)")
        ax.legend()
        plt.show()
        """),
        md(r"""
        ## Does the meta-learned $\theta$ adapt better?

        On new tasks, never seen in training, each starting point takes up to ten gradient
        steps with $\alpha$ on $k = 10$ examples, and is scored on 100 fresh points of the same
        task. Training used one step; more steps are a free extra at test time.
        """),
        code("""
        NEW_TASKS = 50 if QUICK else 1000
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
        display(Markdown("\\n".join(rows)))

        cosine = lambda a, b: (a.T @ b).item() / np.linalg.norm(a) / np.linalg.norm(b)  # noqa: E731
        print("cosine with the shared direction w0: "
              + ", ".join(f"{name} {cosine(theta, w0):.2f}" for name, theta in starts.items()))
        """),
        md(r"""
        Things to notice in the figure and the table:

        * The random $\theta$ points in no useful direction; gradient steps on ten examples
          help it a little and then stall. The meta-learned $\theta$ points along the shared
          direction $w_0$ (the cosines above), and one step on ten examples moves the
          boundary to the task.
        * What MAML optimises is the loss *after* adaptation, not before: its $\theta$ need not
          be good for any task as it stands, and the exact and the first-order versions can
          differ more before adaptation than after it.
        """),
        code("""
        print(f"quick mode: {QUICK}; whole notebook: {time.perf_counter() - NOTEBOOK_START:.0f} s")
        """),
    ]
    return notebook(cells)


# ====================================================================== sine-wave study
def sine_wave():
    cells = [
        md(r"""
        # Sine-wave regression: MAML, first-order MAML, transfer learning and random initialisation

        The regression problem of Finn, Abbeel and Levine (2017), section 5.1. Each task is
        a sine wave $y = A \sin(x - \varphi)$ with amplitude $A \in [0.1, 5]$ and phase
        $\varphi \in [0, \pi]$, observed at $x \in [-5, 5]$. A model sees $K = 10$ points of a
        new task and must fit the whole curve after a few gradient steps. The network is an
        MLP with two hidden layers of 40 ReLU units; the inner learning rate is
        $\alpha = 0.01$.

        We compare four starting points for those gradient steps:

        * **MAML** (second order): meta-trained with memmaml through one inner step;
        * **first-order MAML**: the same, with `first_order=True`;
        * **transfer learning**: one network pretrained on all tasks jointly (it can only
          learn their average), then fine-tuned;
        * **random initialisation**: a fresh network, fine-tuned.

        Then the cost: the wall time of a second-order meta-iteration against a first-order
        one (the paper reports the first-order version about 33% faster).

        **About the stored outputs.** They come from a run on a 2-core CPU without a GPU,
        with 2,000 meta-iterations of 25 tasks each; the paper trains for 70,000. Expect
        MAML's curves to be less accurate than the paper's figures.
        """),
        quick_code("""
        import copy
        import math
        import os
        import time
        import warnings

        import matplotlib.pyplot as plt
        import numpy as np
        import torch
        import torch.nn.functional as F
        from IPython.display import Markdown, display
        from torch import nn

        warnings.filterwarnings("ignore", message="IProgress not found")  # text progress bars without ipywidgets
        from tqdm.auto import tqdm

        import memmaml

        QUICK = os.environ.get("MEMMAML_NOTEBOOK_QUICK", "0") not in ("", "0")
        NOTEBOOK_START = time.perf_counter()

        K = 10                   # shots: support points per task (and as many query points)
        INNER_LR = 0.01          # alpha, as in the paper
        META_LR = 1e-3           # Adam, as in the paper
        META_BATCH = 5 if QUICK else 25                 # tasks per meta-iteration (the paper: 25)
        META_ITERATIONS = 20 if QUICK else 2000         # the paper: 70,000
        EVAL_TASKS = 10 if QUICK else 300               # held-out tasks
        FINE_TUNE_STEPS = 10
        TIMING_ITERATIONS = 5 if QUICK else 150

        torch.set_num_threads(1)  # a 40-unit network is fastest on one thread
        print(f"quick mode: {QUICK}; {META_ITERATIONS} meta-iterations of {META_BATCH} tasks; "
              f"{EVAL_TASKS} held-out tasks; device: cpu ({os.cpu_count()} cores), cuda available: "
              f"{torch.cuda.is_available()}")
        """),
        md("""
        ## Tasks and the network

        A task is an amplitude and a phase; its data are points drawn uniformly on [-5, 5].
        Each method draws its tasks from its own seeded generator; the held-out tasks come
        from another one.
        """),
        code("""
        def sample_tasks(num_tasks, generator):
            amplitude = 0.1 + 4.9 * torch.rand(num_tasks, generator=generator)
            phase = math.pi * torch.rand(num_tasks, generator=generator)
            return amplitude, phase


        def sample_points(amplitude, phase, num_points, generator):
            x = -5 + 10 * torch.rand(num_points, 1, generator=generator)
            return x, amplitude * torch.sin(x - phase)


        def make_network(seed):
            torch.manual_seed(seed)
            return nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1))


        def mse(model, batch):
            x, y = batch
            return F.mse_loss(model(x), y)
        """),
        md("""
        ## Meta-training with memmaml

        A meta-iteration draws 25 tasks; for each, one inner SGD step on its 10 support
        points (`NaiveMAML`: one step needs no checkpointing), then the loss of the adapted
        network on 10 query points of the same task. The mean query loss is backpropagated
        to the initial weights and Adam takes a step. `first_order=True` makes the inner
        gradient a constant: no second-order graph, and the meta-gradient is the query
        gradient at the adapted weights.

        Both versions start from the same initial weights and see the same tasks.
        """),
        code("""
        def meta_train(first_order, seed=0):
            net = make_network(seed)
            maml = memmaml.NaiveMAML(net, mse, memmaml.SGD(INNER_LR))
            meta_optimizer = torch.optim.Adam(net.parameters(), lr=META_LR)
            generator = torch.Generator().manual_seed(seed)
            losses, seconds = [], []
            name = "first-order MAML" if first_order else "MAML"
            for _ in tqdm(range(META_ITERATIONS), desc=name, mininterval=1):
                start = time.perf_counter()
                meta_optimizer.zero_grad()
                total = 0.0
                for amplitude, phase in zip(*sample_tasks(META_BATCH, generator)):
                    support = sample_points(amplitude, phase, K, generator)
                    query = sample_points(amplitude, phase, K, generator)
                    result = maml([support], first_order=first_order)  # one inner step, as in the paper
                    query_loss = mse(result.model, query) / META_BATCH
                    query_loss.backward()
                    total += query_loss.item()
                meta_optimizer.step()
                seconds.append(time.perf_counter() - start)
                losses.append(total)
            return net, np.array(losses), np.array(seconds)


        maml_net, maml_losses, maml_seconds = meta_train(first_order=False)
        fomaml_net, fomaml_losses, fomaml_seconds = meta_train(first_order=True)
        print(f"MAML: {maml_seconds.sum():.0f} s in all; first-order MAML: {fomaml_seconds.sum():.0f} s in all")
        """),
        md("""
        ## The baselines

        **Transfer learning**: one network trained by plain regression on the points of all
        tasks together, with the same number of iterations, tasks per iteration and points
        per task (support and query) as MAML. Since the phases are spread over [0, π], the
        best it can do is the average of the sine waves. **Random initialisation**: a fresh
        network.
        """),
        code("""
        def pretrain(seed=0):
            net = make_network(seed)
            optimizer = torch.optim.Adam(net.parameters(), lr=META_LR)
            generator = torch.Generator().manual_seed(seed)
            losses = []
            for _ in tqdm(range(META_ITERATIONS), desc="transfer (joint training)", mininterval=1):
                amplitude, phase = sample_tasks(META_BATCH, generator)
                x = -5 + 10 * torch.rand(META_BATCH, 2 * K, 1, generator=generator)
                y = amplitude[:, None, None] * torch.sin(x - phase[:, None, None])
                optimizer.zero_grad()
                loss = mse(net, (x, y))
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
            return net, np.array(losses)


        transfer_net, transfer_losses = pretrain()
        random_net = make_network(seed=1)

        window = max(1, META_ITERATIONS // 50)
        smooth = lambda v: np.convolve(v, np.ones(window) / window, mode="valid")  # noqa: E731
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(smooth(maml_losses), label="MAML: query loss after one step")
        ax.plot(smooth(fomaml_losses), label="first-order MAML: query loss after one step")
        ax.plot(smooth(transfer_losses), label="transfer: joint regression loss")
        ax.set_xlabel("meta-iteration")
        ax.set_ylabel(f"MSE (mean of {window} iterations)")
        ax.set_yscale("log")
        ax.legend()
        plt.show()
        """),
        md("""
        ## Held-out tasks: fine-tuning from each starting point

        Every method is fine-tuned the same way on each held-out task: plain SGD with
        learning rate 0.01 on its 10 support points, for 10 steps (a copy of the network, with
        `torch.optim.SGD`, so nothing here is specific to memmaml). The error is the MSE on
        100 evenly spaced points of the true curve on [-5, 5].
        """),
        code("""
        methods = {"MAML": maml_net, "first-order MAML": fomaml_net, "transfer": transfer_net, "random init": random_net}
        x_grid = torch.linspace(-5, 5, 100).unsqueeze(1)


        def fine_tune(net, support, x_eval, y_eval):
            \"\"\"MSE on (x_eval, y_eval) after 0..FINE_TUNE_STEPS SGD steps on support, and the predictions.\"\"\"
            model = copy.deepcopy(net)
            optimizer = torch.optim.SGD(model.parameters(), lr=INNER_LR)
            errors, predictions = [], []
            for step in range(FINE_TUNE_STEPS + 1):
                with torch.no_grad():
                    prediction = model(x_eval)
                errors.append(F.mse_loss(prediction, y_eval).item())
                predictions.append(prediction)
                if step < FINE_TUNE_STEPS:
                    optimizer.zero_grad()
                    mse(model, support).backward()
                    optimizer.step()
            return errors, predictions


        eval_generator = torch.Generator().manual_seed(12345)
        eval_tasks = []
        for amplitude, phase in zip(*sample_tasks(EVAL_TASKS, eval_generator)):
            eval_tasks.append((amplitude, phase, sample_points(amplitude, phase, K, eval_generator)))

        errors = {name: np.zeros((EVAL_TASKS, FINE_TUNE_STEPS + 1)) for name in methods}
        for t, (amplitude, phase, support) in enumerate(tqdm(eval_tasks, desc="held-out tasks", mininterval=1)):
            y_grid = amplitude * torch.sin(x_grid - phase)
            for name, net in methods.items():
                errors[name][t], _ = fine_tune(net, support, x_grid, y_grid)

        rows = ["| method | MSE, 0 steps | 1 step | 10 steps |", "|---|---:|---:|---:|"]
        for name, e in errors.items():
            cells = [f"{e[:, s].mean():.3f} ± {1.96 * e[:, s].std(ddof=1) / math.sqrt(EVAL_TASKS):.3f}" for s in (0, 1, 10)]
            rows.append(f"| {name} | " + " | ".join(cells) + " |")
        display(Markdown(f"Mean MSE over {EVAL_TASKS} held-out tasks (± 95% confidence interval of the mean)\\n\\n"
                         + "\\n".join(rows)))
        """),
        code("""
        fig, ax = plt.subplots(figsize=(7, 4))
        for name, e in errors.items():
            mean = e.mean(0)
            half = 1.96 * e.std(0, ddof=1) / math.sqrt(EVAL_TASKS)
            ax.plot(mean, "o-", ms=3, label=name)
            ax.fill_between(range(FINE_TUNE_STEPS + 1), mean - half, mean + half, alpha=0.2)
        ax.set_xlabel("SGD steps on the 10 support points")
        ax.set_ylabel("MSE on the whole curve")
        ax.set_yscale("log")
        ax.legend()
        ax.set_title(f"{EVAL_TASKS} held-out sine waves")
        plt.show()

        amplitude, phase, support = eval_tasks[0]
        y_grid = amplitude * torch.sin(x_grid - phase)
        fig, axes = plt.subplots(1, 4, figsize=(16, 3.6), sharey=True)
        for ax, (name, net) in zip(axes, methods.items()):
            _, predictions = fine_tune(net, support, x_grid, y_grid)
            ax.plot(x_grid, y_grid, "k-", lw=2, label="true sine")
            for step, style in ((0, ":"), (1, "--"), (FINE_TUNE_STEPS, "-")):
                ax.plot(x_grid, predictions[step], style, label=f"after {step} step{'s' if step != 1 else ''}")
            ax.plot(*support, "^", color="C3", label="support points")
            ax.set_title(name)
            ax.set_xlabel("x")
        axes[0].legend(fontsize=8)
        fig.suptitle(f"A held-out task: amplitude {amplitude:.2f}, phase {phase:.2f}")
        fig.tight_layout()
        plt.show()
        """),
        md("""
        ## Second order against first order: wall time per meta-iteration

        The training loops above also recorded their time per meta-iteration, but they ran
        one after the other, so a change in the machine's load between them would bias the
        comparison. Here both versions run on the same batches of tasks, alternating (and
        alternating which goes first), from a copy of the MAML network; a meta-iteration is
        the inner steps and the meta-backward pass for 25 tasks.
        """),
        code("""
        timing_net = copy.deepcopy(maml_net)
        timing_maml = memmaml.NaiveMAML(timing_net, mse, memmaml.SGD(INNER_LR))
        timing_generator = torch.Generator().manual_seed(7)


        def meta_iteration(batches, first_order):
            timing_net.zero_grad()
            start = time.perf_counter()
            for support, query in batches:
                result = timing_maml([support], first_order=first_order)
                (mse(result.model, query) / META_BATCH).backward()
            return time.perf_counter() - start


        timings = {False: [], True: []}
        for i in tqdm(range(TIMING_ITERATIONS), desc="timing", mininterval=1):
            batches = [(sample_points(a, p, K, timing_generator), sample_points(a, p, K, timing_generator))
                       for a, p in zip(*sample_tasks(META_BATCH, timing_generator))]
            for first_order in ((False, True) if i % 2 == 0 else (True, False)):
                timings[first_order].append(meta_iteration(batches, first_order))

        second, first = np.median(timings[False]), np.median(timings[True])
        train_second, train_first = np.median(maml_seconds), np.median(fomaml_seconds)
        display(Markdown(
            "| | second order | first order | first order saves |\\n|---|---:|---:|---:|\\n"
            f"| alternating runs, median of {TIMING_ITERATIONS} | {1e3 * second:.1f} ms | {1e3 * first:.1f} ms | "
            f"{1 - first / second:.0%} |\\n"
            f"| training loops above, median of {META_ITERATIONS} (includes the Adam step) | {1e3 * train_second:.1f} ms | "
            f"{1e3 * train_first:.1f} ms | {1 - train_first / train_second:.0%} |"))
        print(f"Measured here: a first-order meta-iteration takes {first / second:.2f} times as long as a second-order "
              f"one, {1 - first / second:.0%} less time (the paper reports about 33% faster).")
        """),
        md("""
        ## Summary
        """),
        code("""
        after = {name: (e[:, 1].mean(), e[:, FINE_TUNE_STEPS].mean()) for name, e in errors.items()}
        best_one = min(after, key=lambda n: after[n][0])
        print(f"lowest MSE after one fine-tuning step: {best_one} ({after[best_one][0]:.3f}). All four:")
        for name, (one, ten) in after.items():
            print(f"  {name:>17}: {one:.3f} after one step, {ten:.3f} after {FINE_TUNE_STEPS}")
        print(f"first-order MAML, relative to MAML after one step: {after['first-order MAML'][0] / after['MAML'][0]:.2f}x "
              f"the MSE, in {first / second:.2f}x the time per meta-iteration")
        print(f"quick mode: {QUICK}; whole notebook: {time.perf_counter() - NOTEBOOK_START:.0f} s")
        """),
        md("""
        What to compare with the paper: there, MAML's network fits a new sine wave from 10
        points in one step and keeps improving with more steps, while the pretrained network
        improves little. The pretrained network starts from the average of all tasks, which
        is not zero: with phases only in [0, π] it is a wave of amplitude
        E[A]·2/π ≈ 1.6, the dotted curve of the "transfer" panel. First-order MAML comes close
        to MAML for less computation in the paper; how close it comes here, after far fewer
        meta-iterations, is in the table and the summary above.
        """),
    ]
    return notebook(cells)


NOTEBOOKS = {
    "memory_efficient_maml": colab_demo,
    "maml_from_scratch": from_scratch,
    "sine_wave_maml": sine_wave,
}


def execute(nb, path: Path, timeout: int) -> float:
    from nbclient import NotebookClient

    env_quick = os.environ.pop("MEMMAML_NOTEBOOK_QUICK", None)  # the stored outputs are full runs
    try:
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3", coalesce_streams=True,
                                resources={"metadata": {"path": str(path.parent)}})
        start = time.perf_counter()
        client.execute()
        return time.perf_counter() - start
    finally:
        if env_quick is not None:
            os.environ["MEMMAML_NOTEBOOK_QUICK"] = env_quick


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--execute", action="store_true", help="run each notebook (full size) and store its outputs")
    parser.add_argument("--only", choices=sorted(NOTEBOOKS), action="append", help="build only these notebooks")
    parser.add_argument("--timeout", type=int, default=1800, help="per-cell timeout in seconds for --execute")
    args = parser.parse_args(argv)
    for name in args.only or NOTEBOOKS:
        nb = NOTEBOOKS[name]()
        nb.metadata.pop("widgets", None)
        path = HERE / f"{name}.ipynb"
        if args.execute:
            seconds = execute(nb, path, args.timeout)
            print(f"{path.name}: executed in {seconds:.0f} s", file=sys.stderr)
        nbformat.validate(nb)
        nbformat.write(nb, path)
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
