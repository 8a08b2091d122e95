"""Token prompt init ``patch_embed``: every prompt starts as a patch token the frozen backbone's own embedding makes
(patch embedding + position), unlike VPT's uniform init; refused where it cannot mean anything."""
import pytest
import torch

import vpt
from vpt.config import ConfigError
from vpt.model import sample_patch_tokens

from helpers import TINY_VIT, TINY_VIT_NAME


def model(prompt, seed=0):
    torch.manual_seed(seed)
    return vpt.create_model(TINY_VIT_NAME, prompt=prompt, num_classes=3, pretrained=False, model_kwargs=TINY_VIT)


def test_patch_embed_init_starts_from_patch_tokens_not_vpts_uniform():
    m = model({"kind": "vpt_deep", "num_tokens": 5, "init": "patch_embed"})
    prompts = torch.stack(list(m.prompt.prompts.values()))  # (depth, P, D)
    assert prompts.shape == (2, 5, 32) and len({tuple(r.tolist()) for r in prompts.reshape(-1, 32)}) == 10
    again = model({"kind": "vpt_deep", "num_tokens": 5, "init": "patch_embed"})
    torch.testing.assert_close(torch.stack(list(again.prompt.prompts.values())), prompts)  # seeded: reproducible
    other = model({"kind": "vpt_deep", "num_tokens": 5, "init": "patch_embed"}, seed=1)
    assert not torch.allclose(torch.stack(list(other.prompt.prompts.values())), prompts)
    torch.manual_seed(1)
    with torch.no_grad():
        h, _ = m.backbone.embed(torch.randn(8, 3, 32, 32))
    tokens = h[:, 1:].reshape(-1, 32)  # the backbone's own patch tokens of noise images
    uniform = torch.stack(list(model({"kind": "vpt_deep", "num_tokens": 5}).prompt.prompts.values()))
    assert abs(prompts.std() - tokens.std()) < 0.25 * tokens.std()  # their scale ...
    assert abs(uniform.std() - tokens.std()) > 0.25 * tokens.std()  # ... which VPT's uniform init does not have
    shallow = model({"kind": "vpt_shallow", "num_tokens": 3, "init": "patch_embed"})
    assert abs(shallow.prompt.prompts["0"].std() - tokens.std()) < 0.5 * tokens.std()


def test_sample_patch_tokens_are_rows_of_the_embedding_output():
    m = model(None)
    torch.manual_seed(3)
    got = sample_patch_tokens(m.backbone, m.data_config, 20)  # 20 of 3 images x 16 patches (one spare)
    torch.manual_seed(3)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        h, _ = m.backbone.embed(x)
    rows = h[:, 1:].reshape(-1, 32)  # (48, 32)
    assert got.shape == (20, 32)
    dist = torch.cdist(got, rows)  # every sampled token is one of the embedding's patch tokens, none repeated
    assert torch.all(dist.min(dim=1).values < 1e-2) and len(set(dist.argmin(dim=1).tolist())) == 20


def test_patch_embed_init_is_refused_where_it_means_nothing():
    with pytest.raises(ConfigError, match=r"patch_embed copies patch tokens of the backbone's width.*drop project_dim"):
        model({"kind": "vpt_deep", "init": "patch_embed", "project_dim": 8})
    with pytest.raises(ConfigError, match=r"unknown.*|.*patch_embed.*"):
        model({"kind": "vpt_deep", "init": "patch-embed"})
