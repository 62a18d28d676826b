"""Helpers for multi-scale feature extraction (``forward_intermediates`` / ``feature_info``).

Every backbone describes its feature maps as a list of dicts, ``{"channels", "reduction",
"module"}`` (:func:`feature_info_entry`), and picks maps with :func:`feature_take_indices`.
:class:`FeatureInfo` is the object a ``features_only=True`` model carries, with timm's
accessors (``channels()``, ``reduction()``, ``module_name()``, ``get_dicts()``, indexing).
"""
from __future__ import annotations

import operator
from typing import Iterable, Sequence


def _valid_range(num_features: int) -> str:
    return f"valid indices are 0..{num_features - 1} (or -{num_features}..-1 counting from the last)"


def feature_take_indices(num_features: int, indices: int | Sequence[int] | None) -> list[int]:
    """Normalise ``indices``: None -> all, int n -> the last n, a sequence -> those (negative allowed).

    Returns sorted, de-duplicated non-negative indices (the order ``forward_intermediates`` returns maps in).
    """
    if indices is None:
        return list(range(num_features))
    as_int = hasattr(indices, "__index__")
    if isinstance(indices, str) or not (as_int or isinstance(indices, Iterable)):
        raise TypeError(f"feature indices must be None, an int (the last n maps) or a sequence of ints, "
                        f"got {indices!r}")
    if as_int:
        indices = operator.index(indices)
        if not 0 < indices <= num_features:
            raise ValueError(f"asked for the last {indices} feature maps, the model has {num_features}: "
                             f"give 1..{num_features}")
        return list(range(num_features - indices, num_features))
    indices = list(indices)
    if not indices:
        raise ValueError(f"no feature indices given; {_valid_range(num_features)}")
    out = []
    for i in indices:
        try:
            i = operator.index(i)
        except TypeError:
            raise TypeError(f"feature indices must be ints, got {i!r} in {indices}") from None
        j = i + num_features if i < 0 else i
        if not 0 <= j < num_features:
            raise ValueError(f"feature index {i} is out of range for a model with {num_features} feature maps: "
                             f"{_valid_range(num_features)}")
        out.append(j)
    return sorted(set(out))


def feature_info_entry(channels: int, reduction: int, module: str) -> dict:
    return {"channels": int(channels), "reduction": int(reduction), "module": module}


class FeatureInfo:
    """timm's ``FeatureInfo``: the feature maps a model can return and the ones it does (``out_indices``).

    ``channels()``, ``reduction()`` and ``module_name()`` give one value per selected map (``idx``: an
    index or a list of indices into *all* maps instead); ``get_dicts(keys=None, idx=None)`` the dicts;
    ``info[i]`` and ``len(info)`` index all maps, as in timm. Each dict has timm's keys ``num_chs``,
    ``reduction``, ``module``, ``index`` and vitlab's ``channels``.
    """

    def __init__(self, feature_info: Sequence[dict], out_indices: int | Sequence[int] | None = None):
        info = []
        for i, entry in enumerate(feature_info):
            entry = dict(entry)
            chans = entry.get("channels", entry.get("num_chs"))
            if chans is None or "reduction" not in entry or "module" not in entry:
                raise ValueError(f"feature_info entry {i} needs channels, reduction and module, got {entry}")
            entry.update(num_chs=int(chans), channels=int(chans))
            entry.setdefault("index", i)
            info.append(entry)
        self.info = info
        self.out_indices = tuple(feature_take_indices(len(info), out_indices))

    def from_other(self, out_indices: int | Sequence[int] | None) -> "FeatureInfo":
        return FeatureInfo(self.info, out_indices)

    def get(self, key: str, idx: int | Sequence[int] | None = None):
        if idx is None:
            return [self.info[i][key] for i in self.out_indices]
        if isinstance(idx, (tuple, list)):
            return [self.info[i][key] for i in idx]
        return self.info[idx][key]

    def get_dicts(self, keys: Sequence[str] | None = None, idx: int | Sequence[int] | None = None):
        def pick(i: int) -> dict:
            return dict(self.info[i]) if keys is None else {k: self.info[i][k] for k in keys}
        if idx is None:
            return [pick(i) for i in self.out_indices]
        if isinstance(idx, (tuple, list)):
            return [pick(i) for i in idx]
        return pick(idx)

    def channels(self, idx: int | Sequence[int] | None = None):
        return self.get("num_chs", idx)

    def reduction(self, idx: int | Sequence[int] | None = None):
        return self.get("reduction", idx)

    def module_name(self, idx: int | Sequence[int] | None = None):
        return self.get("module", idx)

    def __getitem__(self, item):
        return self.info[item]

    def __len__(self) -> int:
        return len(self.info)

    def __repr__(self) -> str:
        return (f"FeatureInfo(out_indices={self.out_indices}, channels={self.channels()}, "
                f"reduction={self.reduction()})")
