"""The CoSMoEs mini models: a Llama-3 style decoder with optional MoE (full-rank or WD) FFNs."""

from cosmosim.model.config import MINI_CONFIGS, ModelConfig, get_config
from cosmosim.model.llama import Decoder
from cosmosim.model.losses import AuxLosses, bles_loss, load_balance_loss, moe_aux_losses, router_z_loss
from cosmosim.model.moe import Routing

__all__ = ["MINI_CONFIGS", "AuxLosses", "Decoder", "ModelConfig", "Routing", "bles_loss", "get_config",
           "load_balance_loss", "moe_aux_losses", "router_z_loss"]
