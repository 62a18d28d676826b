"""Resizing learned absolute position embeddings when a checkpoint meets another input size."""
import torch
import torch.nn.functional as F


def resize_pos_embed_nhwc(pos_embed: torch.Tensor, new_hw: tuple[int, int], mode: str = "bicubic") -> torch.Tensor:
    """Resize a (1, H, W, C) grid embedding (VOLO's NHWC layout) to (1, h, w, C)."""
    if tuple(pos_embed.shape[1:3]) == tuple(new_hw):
        return pos_embed
    dtype = pos_embed.dtype
    grid = pos_embed.permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=tuple(new_hw), mode=mode, align_corners=False)
    return grid.permute(0, 2, 3, 1).to(dtype)


def resize_pos_embed_tokens(pos_embed: torch.Tensor, new_hw: tuple[int, int], num_prefix_tokens: int = 1,
                            old_hw: tuple[int, int] | None = None, mode: str = "bicubic") -> torch.Tensor:
    """Resize a (1, prefix + H*W, C) token embedding (ViT layout) to a new grid; prefix tokens are kept."""
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    if old_hw is None:
        side = int(round(grid.shape[1] ** 0.5))
        if side * side != grid.shape[1]:
            raise ValueError(f"cannot infer the grid of a position embedding with {grid.shape[1]} tokens; pass old_hw")
        old_hw = (side, side)
    if tuple(old_hw) == tuple(new_hw):
        return pos_embed
    c = grid.shape[-1]
    grid = grid.reshape(1, old_hw[0], old_hw[1], c)
    grid = resize_pos_embed_nhwc(grid, new_hw, mode).reshape(1, new_hw[0] * new_hw[1], c)
    return torch.cat([prefix, grid], dim=1)
