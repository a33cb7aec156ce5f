"""chexone-support-devices: lines and tubes on chest radiographs, as a chexone plugin.

Adds (entry points in pyproject.toml; nothing here is imported until a recipe selects one of the names):

* task ``lines_tubes`` (:mod:`.tasks`): which support devices a radiograph shows and whether the endotracheal
  tube, nasogastric tube and central venous catheter are well positioned, as multi-label multiple choice over a fixed
  option list (:data:`chexone_support_devices.labels.DEVICE_OPTIONS`);
* reward ``lines_tubes_reward`` (:mod:`.rewards`): weighted F1 of the chosen options, malpositions weighted up;
* metric ``lines_tubes_f1`` (:mod:`.metrics`): per-sample F1 with per-device F1 in the details;
* recipe ``eval_lines_tubes`` (:mod:`.recipes`);
* ``python -m chexone_support_devices.demo --out DIR``: a small generated shard set of phantom radiographs with
  devices drawn at known places.
"""

__version__ = "0.1.0"

#: The chexone plugin API this package was written for (chexone.plugin_api.API_VERSION).
CHEXONE_API_VERSION = 1

#: The task this plugin owns; its reward returns None for samples of every other task.
TASK_NAME = "lines_tubes"
