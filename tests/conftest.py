import torch

# The tests use tiny models: one intra-op thread avoids thread hand-offs that cost more
# than the kernels, and keeps the suite fast when the machine is shared.
torch.set_num_threads(1)
