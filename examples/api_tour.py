"""A short tour of the vitlab model API (runs in a few seconds on a CPU)."""
import torch
import vitlab

print(vitlab.list_models("volo_d1*"))
model = vitlab.create_model("volo_d1", num_classes=10).eval()      # variant name + overrides
print(sum(p.numel() for p in model.parameters()) / 1e6, "M params")

x = torch.randn(2, 3, 224, 224)
with torch.no_grad():
    tokens = model.forward_features(x)                 # (2, 1 + 196, 384): class token first
    logits = model.forward_head(tokens)                # head(cls) + 0.5 * max(aux_head(tokens))
    pooled = model.forward_head(tokens, pre_logits=True)
    maps = model.forward_intermediates(x)              # NCHW maps, one per block group
print(tokens.shape, logits.shape, pooled.shape)
print([tuple(m.shape) for m in maps], [f["reduction"] for f in model.feature_info])

model.save_pretrained("runs/volo_d1_folder")                    # config.json + model.safetensors
again = vitlab.from_pretrained("runs/volo_d1_folder").eval()
big = vitlab.create_model("volo_d1", num_classes=10, img_size=384)
print(vitlab.load_checkpoint(big, "runs/volo_d1_folder"))      # 224 weights at 384: pos_embed resized
