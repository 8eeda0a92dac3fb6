"""`llmkit` under accelerate with FSDP2 sharding on CPU processes (gloo), for the tests of llmkit's FSDP path on a
machine without GPUs. Launched by `accelerate launch --config_file configs/accelerate/fsdp.yaml ... fsdp_on_cpu.py
train ...`.

accelerate turns a launch into FSDP only for processes on accelerators (on CPUs it would run plain data parallel,
which llmkit refuses for an FSDP launch). Here its state is made FSDP on the CPU processes as well, with the
launch's own FSDP settings; torch's `fully_shard` then shards for real over gloo. The launch's ACCELERATE_USE_FSDP
flag is taken out of the environment first, so llmkit's start-up check sees what this launch runs on (CPUs) and
passes: nothing in llmkit is changed.
"""

import os
import sys

import accelerate.state
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

os.environ.pop("ACCELERATE_USE_FSDP")  # FSDP_VERSION, FSDP_STATE_DICT_TYPE and the rest stay for the plugin
_init = accelerate.state.AcceleratorState.__init__


def _init_fsdp_on_cpu(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    if self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP
        if getattr(self, "fsdp_plugin", None) is None:
            self.fsdp_plugin = kwargs.get("fsdp_plugin") or FullyShardedDataParallelPlugin()


accelerate.state.AcceleratorState.__init__ = _init_fsdp_on_cpu

if __name__ == "__main__":
    from llmkit.cli import main

    sys.argv[0] = "llmkit"
    sys.exit(main())
