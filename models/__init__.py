"""Network layer of dislotrack: the U-Net, its input normalisation, decoding and files.

Imports nothing from ``dislotrack.train`` or ``dislotrack.infer``.
"""

from dislotrack.models.decode import CORE_COLUMNS, decode_cores, outputs_to_maps
from dislotrack.models.io import (
    REQUIRED_CARD_KEYS,
    load_lightning_checkpoint,
    load_model,
    save_model,
    validate_card,
)
from dislotrack.models.normalise import NORMALISATION, normalise_image
from dislotrack.models.unet import (
    HEATMAP_CH,
    HVEC_CH,
    N_OUT,
    OUTPUTS,
    RS_CH,
    UNet,
    UNetConfig,
    prepare_for_inference,
    required_multiple,
)

__all__ = [
    "CORE_COLUMNS",
    "HEATMAP_CH",
    "HVEC_CH",
    "N_OUT",
    "NORMALISATION",
    "OUTPUTS",
    "REQUIRED_CARD_KEYS",
    "RS_CH",
    "UNet",
    "UNetConfig",
    "decode_cores",
    "load_lightning_checkpoint",
    "load_model",
    "normalise_image",
    "outputs_to_maps",
    "prepare_for_inference",
    "required_multiple",
    "save_model",
    "validate_card",
]
