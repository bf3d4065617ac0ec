import os

# One intra-op thread for the suite and the editbench processes it starts: on tiny models thread
# synchronisation costs more than the matmuls (the whole suite took 13 min this way while two other
# jobs shared the 2 cores, 21 min before with the default threads on an idle machine).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import json
from functools import lru_cache

import pytest

from editbench.modeling.loading import TINY_MODELS, load_model


@lru_cache(maxsize=None)
def tiny(name: str):
    """Tiny random models are cheap but not free: build each once per session."""
    return load_model(name)


@pytest.fixture(params=TINY_MODELS)
def tiny_lm(request):
    return tiny(request.param)


@pytest.fixture
def cf_root(tmp_path):
    """A small data root holding CounterFact fixtures in both formats."""
    root = tmp_path / "data"
    (root / "counterfact" / "rome").mkdir(parents=True)
    ee = [
        {"case_id": i, "prompt": f"The mother tongue of Person{i} is", "target_new": "English",
         "subject": f"Person{i}", "ground_truth": "French",
         "rephrase_prompt": f"Person{i} speaks the language of",
         "locality_prompt": f"Other{i} is a native speaker of", "locality_ground_truth": "French"}
        for i in range(6)
    ]
    (root / "counterfact" / "counterfact-edit.json").write_text(json.dumps(ee))
    rome = [
        {"case_id": 100 + i, "pararel_idx": 0,
         "requested_rewrite": {"prompt": "{} is located in", "relation_id": "P30",
                               "target_new": {"str": "Antarctica", "id": "Q51"},
                               "target_true": {"str": "Africa", "id": "Q15"}, "subject": f"Land{i}"},
         "paraphrase_prompts": [f"Land{i} belongs to the continent of", f"Land{i} is a part of"],
         "neighborhood_prompts": ["Ghana is in", "Ghana is in", "Mali is located in"],
         "attribute_prompts": ["Ross Island is in"],
         "generation_prompts": [f"Land{i} is famous for", f"People in Land{i} like"]}
        for i in range(3)
    ]
    (root / "counterfact" / "rome" / "counterfact_500.json").write_text(json.dumps(rome))
    return root
