"""Built-in task: image classification (the loop in :mod:`vitlab.engine.trainer`)."""
from vitlab.data.registry import register_task

register_task("classification", help="image classification on any registered backbone and dataset")
