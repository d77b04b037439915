"""Training: the settings object, optimizers and schedules, and the one loop every script and
pruner trains through."""
from utils.training.acceleration import (TrainingAccelerator, accelerator_from_args,  # noqa: F401
                                         add_acceleration_args)
from utils.training.loop import (TrainingDiverged, evaluate, fit, seed_everything,  # noqa: F401
                                 train_one_epoch)
from utils.training.optim import OPTIMIZERS, SCHEDULES, make_optimizer, make_scheduler  # noqa: F401
from utils.training.settings import TrainingSettings  # noqa: F401
