"""A toy task in one file: linear regression on tiny random tensors. Registering it is all it takes to get
the engine's DDP, AMP, accumulation, checkpoints and exact resume (tests/test_task_plugin.py).

Also a script, so that torchrun can start it: ``torchrun --nproc_per_node=2 tests/toy_task.py OUT [--set k=v]``.
"""
import os
import sys
from dataclasses import dataclass, field

import torch
from torch import nn

from vpt.engine import OptimSection, OutputSection, SchedSection, StepOutput, Task, TrainSection
from vpt.registry import TASKS


@dataclass
class ToyConfig:
    task: str = "toy_regression"
    samples: int = 40  # random (x, y) pairs, y = x @ w + noise
    optim: OptimSection = field(default_factory=lambda: OptimSection(opt="sgd", lr=0.05))
    sched: SchedSection = field(default_factory=SchedSection)
    train: TrainSection = field(default_factory=lambda: TrainSection(epochs=3, batch_size=8, workers=0,
                                                                     eval_batch_size=16, log_interval=0))
    output: OutputSection = field(default_factory=OutputSection)


class ToyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 1)

    def forward(self, x):
        return self.fc(x)

    def param_roles(self):
        return {"fc.weight": "head", "fc.bias": "bias"}

    def save_pretrained(self, directory):
        from safetensors.torch import save_file
        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()},
                  os.path.join(directory, "model.safetensors"))


@TASKS.register("toy_regression", config_cls=ToyConfig, help="tests only: linear regression on random tensors")
class ToyRegression(Task):
    name, config_cls, selection = "toy_regression", ToyConfig, "neg_mse"

    def setup(self, run):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(self.cfg.samples, 4, generator=g)
        y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.01 * torch.randn(self.cfg.samples, 1, generator=g)
        n_val = self.cfg.samples // 4
        self.data = {"train": torch.utils.data.TensorDataset(x[n_val:], y[n_val:]),
                     "val": torch.utils.data.TensorDataset(x[:n_val], y[:n_val])}

    def build_model(self, run):
        return ToyModel()

    def train_dataset(self, run):
        return self.data["train"]

    def collate(self, batch):
        if not batch:  # this rank's share of a global batch can be empty
            return torch.zeros(0, 4), torch.zeros(0, 1)
        return torch.utils.data.default_collate(batch)

    def has_split(self, split):
        return split in self.data

    def train_step(self, run, net, batch):
        x, y = (t.to(run.device) for t in batch)
        return StepOutput(((net(x).float() - y) ** 2).sum(), len(x))

    def evaluate(self, run, model, split):
        x, y = self.data[split].tensors
        with torch.no_grad():
            mse = ((model(x.to(run.device)).float().cpu() - y) ** 2).mean().item()
        return {"neg_mse": -mse, "mse": mse}


if __name__ == "__main__":  # torchrun entry: OUT [--set section.field=value ...]
    from vpt.commands._common import apply_sets
    from vpt.config import from_dict, to_dict
    from vpt.engine import init_distributed, teardown_distributed, train

    data = apply_sets(to_dict(ToyConfig()), sys.argv[3::2])
    cfg = from_dict(ToyConfig, data)
    cfg.output.dir = sys.argv[1]
    info = init_distributed("cpu")
    try:
        train(ToyRegression(cfg), info)
    finally:
        teardown_distributed(info)
