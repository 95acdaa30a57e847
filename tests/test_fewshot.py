"""The fair few-shot experiment (ldm/fewshot.py, fewshot.py) and its statistics (ldm/metrics.py): people, not files,
are split; every variant sees only its allowed files; a generator that saw a test file or more of a novel person than
the shots is refused through the experiment's own interface (the unfair design cannot run); Holm's adjustment and the
hierarchical bootstrap against hand-computed cases and closed forms; no accuracy interval leaves [0, 1]."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import fewshot
from ldm import fewshot as fs
from ldm.metrics import (accuracy_estimate, bootstrap_p_value, clustered_proportion, hierarchical_bootstrap,
                         holm_adjust, holm_levels)
from ldm.pipeline import file_record
from ldm.radar.augment import ClassicAugment
from ldm.radar.identity import ClassifierConfig, EvalCNN

pytestmark = pytest.mark.usefixtures("one_thread")   # see tests/conftest.py


# ----------------------------------------------------------------------------------------------------------------
# Splits
# ----------------------------------------------------------------------------------------------------------------
def test_people_split_keeps_novel_people_out_of_every_base_file(tmp_path):
    from ldm.radar.simulator import write_dataset
    write_dataset(tmp_path / "data", users=6, per_user=8, size=64, seed=0, progress=False)
    cfg = SimpleNamespace(pipeline=None, novel=2, test_per_person=3, split_seed=0)
    people = fewshot.prepare_people(cfg, tmp_path / "out", tmp_path / "data")
    assert len(people["novel"]) == 2 and len(people["base"]) == 4
    assert not set(people["novel"]) & set(people["base"])
    base_files = [n for part in people["base_split"].values() for n in part]
    assert {n.split("/")[0] for n in base_files} == set(people["base"])      # no novel person's file anywhere
    assert sorted(p.name for p in (tmp_path / "out" / "base_data").iterdir() if p.is_dir()) == people["base"]
    split = json.loads((tmp_path / "out" / "base_split.json").read_text())
    assert sorted(split["class_to_idx"]) == people["base"]                  # what train_vae/train_ldm read
    for person in people["novel"]:
        pool, test = set(people["pool"][person]), set(people["test"][person])
        assert len(test) == 3 and len(pool) == 5 and not pool & test
    # decided once: a second call rereads the same record
    assert fewshot.prepare_people(cfg, tmp_path / "out", tmp_path / "data") == people


def test_novel_files_split_by_recording_and_shots_nest():
    files = {"a": [f"a/{i:02d}.npy" for i in range(12)], "b": [f"b/{i:02d}.npy" for i in range(12)]}
    sessions = {name: f"{name[0]}/s{int(name[2:4]) % 4}" for names in files.values() for name in names}
    pool, test = fs.split_novel_files(files, 4, seed=3, recording_of=sessions)
    for person in files:
        assert len(test[person]) >= 4 and set(pool[person]) | set(test[person]) == set(files[person])
        assert not {sessions[n] for n in pool[person]} & {sessions[n] for n in test[person]}   # whole sessions
    small, large = fs.draw_shots(pool, 2, draw=5), fs.draw_shots(pool, 4, draw=5)
    for person in files:
        assert len(small[person]) == 2 and set(small[person]) <= set(large[person]) <= set(pool[person])
    assert fs.draw_shots(pool, 2, draw=6) != small                       # another draw, other shots
    with pytest.raises(ValueError, match="no pool"):
        fs.split_novel_files({"a": files["a"][:3]}, 3, seed=0)


# ----------------------------------------------------------------------------------------------------------------
# Who sees what
# ----------------------------------------------------------------------------------------------------------------
PEOPLE = ("p0", "p1", "p2")


def small_world(size: int = 16):
    """3 novel people x 10 files (6 pool, 4 test): person p's images are bright in band p, so they can be told apart."""
    g = torch.Generator().manual_seed(0)
    names, xs, labels = [], [], []
    for c, person in enumerate(PEOPLE):
        for i in range(10):
            x = -torch.ones(1, size, size) + 0.1 * torch.rand(1, size, size, generator=g)
            x[:, 4 * c:4 * c + 4] = 0.8
            names.append(f"{person}/{i:02d}.npy")
            xs.append(x)
            labels.append(c)
    pool = {p: [f"{p}/{i:02d}.npy" for i in range(6)] for p in PEOPLE}
    test = sorted(f"{p}/{i:02d}.npy" for p in PEOPLE for i in range(6, 10))
    physics = np.array([[1.0 + 0.5 * lab, 1.8 + 0.1 * lab] for lab in labels])
    data = fs.NovelData(torch.stack(xs), torch.tensor(labels), names, physics, test)
    return data, pool


def gaussian_generator(data: fs.NovelData, fit_on: dict[str, list[str]], num: int = 6, dims: int = 5) -> fs.Generated:
    """The issue's per-person Gaussian 'generator': per person a Gaussian in a PCA space of pixels fitted on the files
    it is given, its provenance naming exactly those files (and base training files of other people)."""
    g = torch.Generator().manual_seed(1)
    rows = data.rows([n for p in sorted(fit_on) for n in fit_on[p]])
    flat = data.x[rows].flatten(1)
    mean = flat.mean(0)
    _, _, vh = torch.linalg.svd(flat - mean, full_matrices=False)
    axes = vh[:dims]
    xs, ys = [], []
    for c, person in enumerate(sorted(fit_on)):
        own = data.x[data.rows(fit_on[person])].flatten(1)
        z = (own - mean) @ axes.T
        spread = z.std(0) if len(own) > 1 else torch.full((len(axes),), 0.1)
        draws = z.mean(0) + spread * torch.randn(num, len(axes), generator=g)
        xs.append((draws @ axes + mean).clamp(-1, 1).view(num, *data.x.shape[1:]))
        ys.append(torch.full((num,), c))
    provenance = {"trained_on": file_record(["base_a/0.npy", "base_b/0.npy"]),
                  "enrolled": {person: file_record(fit_on[person]) for person in fit_on}}
    return fs.Generated(torch.cat(xs), torch.cat(ys), np.zeros((num * len(fit_on), 2)), provenance)


def score(data, shots, pool, generated, variants=fs.VARIANTS):
    clf = ClassifierConfig(num_classes=3, image_size=16, widths=(4, 8), epochs=1, min_steps=3, batch_size=8)
    embedding = EvalCNN(ClassifierConfig(num_classes=5, image_size=16, widths=(4, 8)))
    return fs.score_unit(data, shots, pool, clf, ClassicAugment(), embedding.eval(), np.array([0.1, 0.1]),
                         generated, variants)


def test_each_variant_trains_only_on_its_allowed_files():
    data, pool = small_world()
    shots = fs.draw_shots(pool, 2, draw=0)
    scored = score(data, shots, pool, gaussian_generator(data, shots))
    shot_files = sorted(n for p in shots for n in shots[p])
    assert set(scored["predictions"]) == set(fs.VARIANTS)
    for variant, files in scored["trained_on"].items():
        assert files == (sorted(n for p in pool for n in pool[p]) if variant == "oracle" else shot_files), variant
        assert not set(files) & set(data.test)
        assert len(scored["predictions"][variant]) == len(data.test)
    # the physics variant is a nearest centroid of the shots: these people differ by 0.5 m/s, so it is exact
    assert scored["predictions"]["physics"] == scored["labels"]
    # no generated data: the "+enrolled" variants are skipped, not run on real data alone
    assert set(score(data, shots, pool, None, ("real", "real+enrolled"))["predictions"]) == {"real"}


def test_the_unfair_design_is_refused_through_the_experiments_interface():
    data, pool = small_world()
    shots = fs.draw_shots(pool, 2, draw=0)
    # the per-person Gaussian fitted on all of each novel person's pool files (the unfair design): refused
    with pytest.raises(ValueError, match="files of the scored person"):
        score(data, shots, pool, gaussian_generator(data, pool), ("real+enrolled",))
    # fitted on k files that are not the shots every variant gets: refused too, naming the file
    others = {p: [n for n in pool[p] if n not in shots[p]][:2] for p in pool}
    with pytest.raises(ValueError, match="not one of the 2 shots"):
        score(data, shots, pool, gaussian_generator(data, others), ("real+enrolled",))
    # a generator that saw a scored test file: refused
    leaky = gaussian_generator(data, shots)
    leaky.provenance["trained_on"] = file_record(["base_a/0.npy", data.test[0]])
    with pytest.raises(ValueError, match=f"test file {data.test[0]}"):
        score(data, shots, pool, leaky, ("real+enrolled",))
    # unknown provenance: refused
    unknown = gaussian_generator(data, shots)
    unknown.provenance = None
    with pytest.raises(ValueError, match="provenance is unknown"):
        score(data, shots, pool, unknown, ("embedding+enrolled",))
    # the fair one, fitted on exactly the shots: accepted
    assert "real+enrolled" in score(data, shots, pool, gaussian_generator(data, shots),
                                    ("real+enrolled",))["predictions"]


def test_nearest_mean_and_centroid_by_hand():
    support = torch.tensor([[1.0, 0.0], [3.0, 0.2], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    queries = torch.tensor([[2.0, 0.5], [0.2, 2.0]])
    assert fs.nearest_mean(support, labels, queries, 2).tolist() == [0, 1]
    # equal weight of shot mean and sample mean: class 0's shots point at ~2 degrees, class 1's at 90; a sample at
    # 45 degrees pulls class 0's prototype to ~23 degrees, so a query at 50 degrees moves from class 1 to class 0
    query = torch.tensor([[np.cos(np.radians(50)), np.sin(np.radians(50))]], dtype=torch.float32)
    assert fs.nearest_mean(support, labels, query, 2).tolist() == [1]
    extra = torch.tensor([[1.0, 1.0], [0.0, 2.0]])                      # class 1's sample keeps it at 90 degrees
    moved = fs.nearest_mean(support, labels, query, 2, extra, torch.tensor([0, 1]))
    assert moved.tolist() == [0]
    # nearest centroid in spread units, NaN features ignored
    support = np.array([[1.0, 2.0], [1.2, np.nan], [2.0, 1.5]])
    got = fs.nearest_centroid(support, np.array([0, 0, 1]), np.array([[1.5, 1.95], [1.7, np.nan]]), 2,
                              np.array([1.0, 0.1]))
    # query 0: class 0 at (1.1, 2.0) -> 0.16 + 0.25 = 0.41; class 1 at (2.0, 1.5) -> 0.25 + 20.25; query 1: speed only
    assert got.tolist() == [0, 1]


# ----------------------------------------------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------------------------------------------
def test_holm_adjustment_by_hand():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted: 0.005 x 4 = 0.02; 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04 -> running max 0.06
    np.testing.assert_allclose(holm_adjust(p), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm_adjust([0.5, 0.9]), [1.0, 1.0])
    # levels: 0.005 <= 0.05/4 rejected (level 1 - 0.05/4); 0.01 <= 0.05/3 rejected (1 - 0.05/3); 0.03 > 0.05/2
    # stops (1 - 0.05/2), and 0.04 after it keeps that step's level
    np.testing.assert_allclose(holm_levels(p), [1 - 0.05 / 3, 1 - 0.05 / 2, 1 - 0.05 / 2, 1 - 0.05 / 4])
    np.testing.assert_allclose(holm_levels([0.001, 0.002]), [1 - 0.05 / 2, 1 - 0.05])   # both rejected
    with pytest.raises(ValueError):
        holm_adjust([0.1, 1.5])


def test_bootstrap_p_value_by_hand():
    v = np.array([-1.0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    assert bootstrap_p_value(v) == pytest.approx(2 * 2 / 11)           # 1 replicate <= 0: (1 + 1) / 11, doubled
    assert bootstrap_p_value(np.ones(99)) == pytest.approx(2 / 100)    # never 0 with finitely many replicates
    assert bootstrap_p_value(np.zeros(10)) == 1.0


def test_hierarchical_bootstrap_exact_small_case():
    # 2 seeds, 1 draw each, 1 person with 1 test file: the replicate is the mean of two seeds drawn with
    # replacement from accuracies {0, 1}: 0, 1/2, 1 with probabilities 1/4, 1/2, 1/4
    hits = [np.array([[[0]]]), np.array([[[1]]])]
    reps = hierarchical_bootstrap(hits, [1], num_resamples=20000, seed=0)[:, 0]
    for value, prob in ((0.0, 0.25), (0.5, 0.5), (1.0, 0.25)):
        assert np.mean(reps == value) == pytest.approx(prob, abs=0.015)
    assert accuracy_estimate(hits, [1]) == pytest.approx([0.5])


def test_hierarchical_bootstrap_variance_matches_the_closed_forms():
    # Seeds and draws, one person: Var* = (1/S) [plug-in var of seed means + mean plug-in within-seed var / D]
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, size=(3, 4))                                  # (S, D) accuracies, 1 file of weight 100
    hits = [np.round(100 * row)[:, None, None] for row in x]
    x = np.round(100 * x) / 100
    reps = hierarchical_bootstrap(hits, [100], num_resamples=30000, seed=1)[:, 0]
    expected = (x.mean(1).var() + x.var(1).mean() / 4) / 3
    assert reps.var() == pytest.approx(expected, rel=0.05)
    assert reps.mean() == pytest.approx(x.mean(), abs=0.003)
    # Persons only (one seed, one draw, equal test files per person): Var* = plug-in var of person accuracies / P
    per_person = np.array([2, 5, 9, 12, 12, 7, 0, 10])                 # correct of 12 each
    reps = hierarchical_bootstrap([per_person[None, :, None]], np.full(8, 12), num_resamples=30000, seed=2)[:, 0]
    assert reps.var() == pytest.approx((per_person / 12).var() / 8, rel=0.05)
    # variants share every draw: the difference of two columns resamples the paired difference
    both = np.stack([per_person, np.minimum(per_person + 1, 12)], axis=-1)[None]   # (1, P, 2)
    reps = hierarchical_bootstrap([both], np.full(8, 12), num_resamples=5000, seed=3)
    d = reps[:, 1] - reps[:, 0]
    assert d.min() > 0                                                 # every replicate sees the same persons in both


def test_clustered_proportion_resamples_persons_not_samples():
    # Equal totals: a replicate is the mean of P per-person accuracies drawn with replacement, so its standard
    # deviation is the population standard deviation of the accuracies over sqrt(P) (the closed form), whatever the
    # number of samples per person. An interval over samples as independent trials would shrink with the totals.
    accuracies = np.array([0.95, 0.2, 0.9, 0.5, 0.75, 1.0, 0.4, 0.85])
    for per_person in (20, 2000):
        hits = accuracies * per_person
        value, low, high = clustered_proportion(hits, np.full(8, per_person), num_resamples=40_000, seed=1)
        sd = accuracies.std() / np.sqrt(8)
        assert value == pytest.approx(accuracies.mean())
        assert high - low == pytest.approx(2 * 1.96 * sd, rel=0.1)


def test_intervals_stay_within_zero_and_one():
    perfect = [np.full((3, 4, 2), 5)]                                   # every file right, every draw
    reps = hierarchical_bootstrap(perfect, np.full(4, 5), num_resamples=500)
    assert reps.min() == 1.0 and reps.max() == 1.0
    value, low, high = clustered_proportion([32, 32, 30, 31], [32, 32, 32, 32], num_resamples=500)
    assert value == pytest.approx(125 / 128) and 0 <= low <= value <= high <= 1
    value, low, high = clustered_proportion([0, 0, 1], [32, 32, 32], num_resamples=500)
    assert 0 <= low <= value <= high <= 1
    # the experiment's own summary of near-perfect units: every accuracy interval within [0, 1]
    units = []
    for draw in range(3):
        hits = {v: [4, 4, 3 + (draw == 1)] for v in fs.VARIANTS if v != "oracle"}
        units.append({"kind": "unit", "seed": 0, "draw": draw, "shots": 4, "hits": hits, "totals": [4, 4, 4],
                      "samples_identified": [30, 32, 31], "samples_per_person": 32})
    cfg = SimpleNamespace(resamples=300)
    summary = fewshot.summarise(units, list(PEOPLE), {"pool": {p: [] for p in PEOPLE}}, cfg, {}, None)
    assert summary["rows"] and all(0 <= r["ci"][0] <= r["accuracy"] <= r["ci"][1] <= 1 for r in summary["rows"])
    assert summary["primary"]["variant"] == fs.PRIMARY_VARIANT and summary["primary"]["shots"] == 4
    assert all(-1 <= s["ci"][0] <= s["ci"][1] <= 1 for s in summary["secondary"])
    assert len(summary["secondary"]) == len(fs.GENERATIVE) * len(fs.NON_GENERATIVE) - 1
    text = fs.summary_markdown(summary)                                 # the tables docs/augmentation.md shows
    assert "**Primary contrast** (k = 4): embedding+enrolled minus" in text and text.count("\n| 4 |") >= 6


def test_units_file_resumes_after_a_kill(tmp_path):
    path = tmp_path / "units.jsonl"
    fewshot.append_unit(path, {"kind": "unit", "seed": 0, "draw": 0, "shots": 4})
    with open(path, "a") as f:
        f.write('{"kind": "unit", "seed": 0, "dr')                       # a line cut short by a kill
    assert [(u["seed"], u["draw"]) for u in fewshot.read_units(path)] == [(0, 0)]


def test_a_run_folder_refuses_changed_options(tmp_path):
    cfg = fewshot.FewShotConfig(out=str(tmp_path))
    fewshot.write_json(tmp_path / "config.json", fewshot.asdict(cfg))
    fewshot.check_options(fewshot.FewShotConfig(out=str(tmp_path), draws=40, shots="4"))   # growable: fine
    with pytest.raises(ValueError, match="--novel"):
        fewshot.check_options(fewshot.FewShotConfig(out=str(tmp_path), novel=4))
    # workers: --processes N on one machine, or --worker I/N by hand, not both; either may change between runs
    fewshot.check_options(fewshot.FewShotConfig(out=str(tmp_path), processes=2))
    fewshot.check_options(fewshot.FewShotConfig(out=str(tmp_path), worker="1/2"))
    with pytest.raises(ValueError, match="--processes 2 starts its own workers"):
        fewshot.check_options(fewshot.FewShotConfig(out=str(tmp_path), processes=2, worker="1/2"))
