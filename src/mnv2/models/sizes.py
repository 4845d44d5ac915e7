"""Input-size limits of the architecture, torch-free (the runtime pads and checks inputs with them)."""

MIN_INPUT_SIZE = 32  # five stride-2 stages: below 32 px the last feature map would be smaller than 1x1
MAX_INPUT_SIZE = 8192  # a size check before any allocation (a 100000-px input would need terabytes)
