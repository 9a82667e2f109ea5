"""The seed models assembled from ``medkernels.nn`` modules."""

from .clip import CT_RATE_PATHOLOGIES, ByteTokenizer, DCFormerCLIP, TextTransformer, zero_shot_probabilities
from .dcformer import (
                       DCFORMER_CONFIGS,
                       DCFormer,
                       DCFormerEncoder,
                       dcformer,
                       decomp_base,
                       decomp_naive,
                       decomp_nano,
                       decomp_small,
                       decomp_tiny,
)
from .fast_ddpm import (
                        FAST_DDPM_CONDITIONING,
                        FAST_DDPM_CONFIGS,
                        FAST_DDPM_DIFFUSION,
                        FastDDPMUNet,
                        load_fast_ddpm_checkpoint,
                        sg_input,
                        sr_condition,
                        sr_input,
)
from .med3dvlm import Med3DVLM, MixerLowHighHybridMLP, VisionTower

__all__ = ["DCFORMER_CONFIGS", "DCFormer", "DCFormerEncoder", "dcformer", "decomp_nano", "decomp_naive",
           "decomp_tiny", "decomp_small", "decomp_base", "DCFormerCLIP", "TextTransformer", "ByteTokenizer",
           "CT_RATE_PATHOLOGIES", "zero_shot_probabilities", "MixerLowHighHybridMLP", "Med3DVLM", "VisionTower",
           "FastDDPMUNet", "FAST_DDPM_CONFIGS", "FAST_DDPM_CONDITIONING", "FAST_DDPM_DIFFUSION",
           "load_fast_ddpm_checkpoint", "sg_input", "sr_input", "sr_condition"]
from .ldm_morph import (  # noqa: E402  (LDM-Morph, issue 15 item 4)
                        LDM_MORPH_CONFIGS,
                        LDM_MORPH_LOSS,
                        LDMFeatureExtractor,
                        LDMMorph,
                        LDMMorphRegistration,
                        LDMUNet,
                        VQEncoder,
                        folding_percent,
                        hierarchical_loss,
                        jacobian_determinant,
                        load_ldm_state_dict,
                        warp,
)

__all__ += ["LDMMorph", "LDMMorphRegistration", "LDMFeatureExtractor", "LDMUNet", "VQEncoder", "LDM_MORPH_CONFIGS",
            "LDM_MORPH_LOSS", "hierarchical_loss", "warp", "jacobian_determinant", "folding_percent",
            "load_ldm_state_dict"]

from .swincross import SWINCROSS_CONFIGS, SwinCross, SwinUNETR_CrossModalityFusion_OutSum_6stageOuts  # noqa: E402

__all__ += ["SwinCross", "SWINCROSS_CONFIGS", "SwinUNETR_CrossModalityFusion_OutSum_6stageOuts"]


# issue 14 item 3: 3D diffusion tumour segmentation (PET/CT)
from .diffusion_segmentation import (  # noqa: E402
    SEGMENTATION_CONFIGS,
    ConditionalDDPM,
    DiffusionSegmentation,
    SegmentationResult,
    dice_score,
    sample_variance,
)

__all__ += ["ConditionalDDPM", "DiffusionSegmentation", "SegmentationResult", "SEGMENTATION_CONFIGS", "dice_score",
            "sample_variance"]
