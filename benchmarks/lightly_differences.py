"""What benchmarks/lightly_reference.py writes beside its rows: what differs between its two
sides for every method, and how its short CPU runs differ from lightly's own benchmark."""

from __future__ import annotations

#: What differs between the two sides for every method (per-method ones are added below).
COMMON_DIFFERENCES = [
    "initial weights: lightly's side builds torchvision's resnet18() (lightly's benchmark), "
    "sslbench timm's resnet18 with zero_init_last=False: the same distributions "
    "(tests/nn/test_backbones.py), other draws; other backbone names: the same timm model",
    "augmentation: lightly's per-image torchvision/PIL ops on the 28-px cached images in the "
    "DataLoader instead of sslbench's batched tensor ops; same parameters, but torchvision's "
    "crop boxes are whole pixels of the 28-px image (sslbench: sub-pixel boxes, roi_align) "
    "and PIL rounds to uint8 between the colour-jitter steps",
    "random draws: torch's global generator seeded once (sslbench: a generator per step); same "
    "distributions, other draws; the batches are shuffled by the same seeded sampler",
    "precision: float32 on lightly's side; sslbench's default (bf16-mixed on a GPU, float32 "
    "on a CPU)",
    "lr: lightly's CosineWarmupScheduler(end_value=0) stepped every optimiser step; the same "
    "warm-up, but the cosine reaches 0 at the last step, progress (s-w)/(T-w-1), where "
    "sslbench's uses (s-w)/(T-w)",
    "a plain PyTorch loop: no Lightning, no collapse monitor, no non-finite checks",
]


#: How these settings differ from lightly's own Imagenette benchmark (context, not a
#: difference from sslbench): its numbers come from torchvision resnet18 at 128 px, batch 256,
#: 200 or 800 epochs, the lr schedule stepped per epoch.
VS_LIGHTLY_BENCHMARK = {
    "simclr": "NTXentLoss T=0.2 (the demo's) vs 0.5; colour-jitter strength 1.0 vs 0.5",
    "simsiam": "lr 0.12 vs 0.06; SimCLRTransform vs SimSiamTransform",
    "byol": "SimCLRTransform vs BYOLTransform (asymmetric blur and solarisation)",
    "barlowtwins": "LARS 0.2*b/256, wd 1.5e-6, biases and norms excluded vs SGD 0.06*b/256, "
    "wd 5e-4; SimCLRTransform vs BYOLTransform",
    "vicreg": "VICRegProjectionHead (the same 3 layers as its BarlowTwinsProjectionHead); "
    "warm-up 0.3 of the epochs vs 20 of 200; SimCLRTransform vs VICRegTransform",
    "swav": "SimCLR jitter strength 1.0 vs 0.5",
    "vicregl": "2 local views vs none (n_local_views=0); small stem; sslbench's SimCLR crop "
    "and jitter vs VICRegLTransform's defaults (jitter p 1.0, strength 0.5, blur, solarisation)",
    "tico": "warm-up 0.3 of the epochs vs 20 of 200; SimCLRTransform vs BYOLTransform",
    "fastsiam": "lr 0.12 vs 0.06 (SimSiam's overrides); FastSiamTransform at SimCLR's jitter "
    "(0.8, 0.8, 0.8, 0.2) and crop scale 0.08 vs its SimSiam defaults (0.4, 0.4, 0.4, 0.1; "
    "scale 0.2)",
    "simclr_dcl": "DCLLoss T=0.2 (the demo's) vs 0.1; colour-jitter strength 1.0 vs 0.5",
    "simclr_dclw": "DCLWLoss T=0.2 (the demo's) vs 0.1 (sigma 0.5 in both); colour-jitter "
    "strength 1.0 vs 0.5",
    "swav_queue": "the queues join the loss from epoch 1 (its learning-run override) vs 15; "
    "SimCLR jitter strength 1.0 vs 0.5",
    "mocov2": "NTXentLoss T=0.2 (the demo's) vs 0.1; memory bank 2048 vs 4096; colour-jitter "
    "strength 1.0 vs 0.5",
    "mocov3": "not in lightly's benchmark: the official ResNet code's settings (LARS 0.6*b/256, "
    "wd 1e-6, biases and norms excluded, T=1.0, momentum 0.99 to 1 by a cosine), warm-up 0.3 "
    "of the epochs vs 10 of 100; SimCLRTransform vs the official code's BYOL augmentation",
    "dino": "2 local crops vs 6; the demo's SimCLR crops (scale 0.08, no blur at 32 px, no "
    "solarisation) vs DINOTransform's BYOL-style global crops (scale 0.4, blur 1.0 and 0.1, "
    "solarisation 0.2); colour-jitter strength 1.0 vs 0.5",
    "nnclr": "NTXentLoss T=0.2 (the demo's) vs 0.5; support set 2048 vs 4096; colour-jitter "
    "strength 1.0 vs 0.5",
    "smog": "bank 2048 vs 10,000; resets every 30 steps vs 300; SimCLRTransform vs "
    "SMoGTransform (BYOL-style views, crop scale 0.2, jitter always, strength 0.5)",
}
