"""Step outputs of ops (the sharded job) stored through UCS, so any worker can read them.

Why not Dagster's ``FilesystemIOManager``: on Celery workers or Kubernetes step pods the next step
runs on another machine, which cannot see this one's disk. The values passed between the sharded
job's steps are small (shard plans); the shard results themselves go to the results bucket by the
library (``shards.run_one_shard``), not through here.
"""

import pickle
from typing import Any

from dagster import ConfigurableIOManager, InputContext, OutputContext

from backtest_pipeline import layout
from resources.ucs_resource import UCSResource


def _path(context: OutputContext) -> str:
    # One object per step (``run_shard[s1]``) and per dynamic output of a step (``result.s1``).
    # The run id is the producing run's, so a re-execution reads its parent's outputs.
    name = context.name if context.mapping_key is None else f"{context.name}.{context.mapping_key}"
    return layout.step_output_path(context.run_id, context.step_key, name)


class UCSPickleIOManager(ConfigurableIOManager):
    """Pickles under ``shards/steps/{dagster run id}/{step}/{output}.pkl`` in the results bucket."""

    ucs: UCSResource

    def handle_output(self, context: OutputContext, obj: Any) -> None:
        self.ucs.client().upload_to_gcs_sync(
            layout.target("results"), _path(context), pickle.dumps(obj), format="bytes"
        )

    def load_input(self, context: InputContext) -> Any:
        upstream = context.upstream_output
        assert upstream is not None
        data = self.ucs.client().download_bytes_sync(layout.target("results"), _path(upstream))
        return pickle.loads(data)
