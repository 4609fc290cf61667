"""Run scripts/train.py, but SIGKILL the process in the middle of writing the checkpoint of step
$FTLAB_TEST_KILL_STEP: after Orbax has written the array state into its temporary step directory and before the
step's JSON metadata is written and the directory is renamed into place. Used by test_reliability.py."""

import os
import runpy
import signal
import sys

import orbax.checkpoint as ocp

from ftlab.checkpoint import train_state

KILL_STEP = int(os.environ["FTLAB_TEST_KILL_STEP"])
_save = train_state.save
_json_async_save = ocp.handlers.JsonCheckpointHandler.async_save
_current = {"step": None}


def save(mngr, step, state, meta):
    _current["step"] = step
    return _save(mngr, step, state, meta)


async def json_async_save(self, directory, *args, **kwargs):
    if _current["step"] == KILL_STEP:
        os.kill(os.getpid(), signal.SIGKILL)
    return await _json_async_save(self, directory, *args, **kwargs)


train_state.save = save
ocp.handlers.JsonCheckpointHandler.async_save = json_async_save
sys.argv = [os.path.join(os.path.dirname(__file__), "..", "scripts", "train.py"), *sys.argv[1:]]
runpy.run_path(sys.argv[0], run_name="__main__")
