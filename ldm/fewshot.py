"""The fair few-shot identification experiment's parts (fewshot.py runs it; docs/augmentation.md explains it).

The question: a radar group has recordings of many people and must recognise a new person from k walks. Does a
generator trained on the people it has, with the new person enrolled from the same k walks, help more than the
methods that need no generator? Fairness is a matter of who sees which file:

    people        split once into base people (train the VAE, the LDM, the embedding network; tune `classic`) and
                  novel people (the scored ones), never both
    novel files   split per novel person into a pool (the shots are drawn from it; the oracle trains on all of it)
                  and test files (scored; no generator, classifier or tuning step ever sees one)
    shots         draw d takes the first k of a permutation of each novel person's pool seeded by (d, person), so the
                  shots of k = 4 are part of those of k = 8
    variants      see exactly the files allowed_files() names; a generator is accepted only through
                  check_generator(), which refuses one that saw a test file or any novel file outside the shots

    split_people, split_novel_files, draw_shots     the splits
    allowed_files, check_generator                  who may see what, enforced
    nearest_mean, physics_vectors, nearest_centroid the non-CNN variants
    score_unit                                      every variant of one (generator seed, shot draw, k)
    summary_markdown                                the result tables of a summary (fewshot.json)

Shapes: N images (C, H, W) in [-1, 1], P novel persons (labels 0..P-1 in sorted name order), D feature dim.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from ldm.pipeline import check_provenance, person_of
from ldm.radar.augment import ClassicAugment, balanced_indices
from ldm.radar.identity import ClassifierConfig, EvalCNN, predict, train_classifier

# The variants, in table order. Non-generative ones compete; the generative ones are the claim; oracle is the ceiling.
NON_GENERATIVE = ("real", "classic", "embedding", "physics")
GENERATIVE = ("real+enrolled", "embedding+enrolled")
CEILING = "oracle"
VARIANTS = (*NON_GENERATIVE, *GENERATIVE, CEILING)

# The primary contrast, fixed before any run: embedding + enrolled samples against the best non-generative variant at
# k = 4. Why embedding + enrolled: the embedding variant is the standard few-shot competitor (a network trained on the
# base people, nearest class mean of the k shots), so adding the enrolled samples to its class means isolates what
# the generator adds to the strongest method that uses the same base people. "Best" is the non-generative variant
# with the highest accuracy at k = 4 in the run itself: choosing the competitor on the scored data can only favour the
# competitor, so the contrast stays conservative. Every other contrast is secondary and Holm-adjusted.
PRIMARY_VARIANT = "embedding+enrolled"
PRIMARY_SHOTS = 4

# Physics variant and physics table: the features of ldm.radar.physics.physics_features.
PHYSICS_CENTROID_KEYS = ("torso_speed_mps", "cadence_steps_per_s")
PHYSICS_TABLE_KEYS = ("torso_speed_mps", "cadence_steps_per_s", "bandwidth_mps", "upper_envelope_mps",
                      "lower_envelope_mps")


# ----------------------------------------------------------------------------------------------------------------
# Splits: people, then the novel people's files, then the shots
# ----------------------------------------------------------------------------------------------------------------
def split_people(people: list[str], novel: int, seed: int) -> tuple[list[str], list[str]]:
    """(base, novel) person names, each sorted: ``novel`` people drawn by a permutation seeded by ``seed``."""
    people = sorted(people)
    if not 1 <= novel < len(people) - 1:
        raise ValueError(f"need at least 2 base people and 1 novel person; got {len(people)} people and "
                         f"novel={novel}")
    order = np.random.default_rng([seed, 7]).permutation(len(people))
    chosen = {people[i] for i in order[:novel]}
    return [p for p in people if p not in chosen], [p for p in people if p in chosen]


def split_novel_files(files: dict[str, list[str]], test_per_person: int, seed: int,
                      recording_of: dict[str, str] | None = None) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Per novel person, (pool, test): whole recordings (a simulated session, a recording cut into windows; each
    file its own recording when ``recording_of`` {file name: recording} does not say) are drawn by a permutation
    seeded by (seed, person's position in sorted order) into test until it holds at least ``test_per_person`` files;
    the rest form the pool the shots and the oracle use. Keeping a recording on one side means no shot shares a
    session's aspect, distance and speed offset with a scored file. Both sorted."""
    recording_of = recording_of or {}
    pool, test = {}, {}
    for i, person in enumerate(sorted(files)):
        names = sorted(files[person])
        groups: dict[str, list[str]] = {}
        for name in names:
            groups.setdefault(recording_of.get(name, name), []).append(name)
        keys = sorted(groups)
        chosen: list[str] = []
        for j in np.random.default_rng([seed, 11, i]).permutation(len(keys)):
            if len(chosen) >= test_per_person:
                break
            chosen += groups[keys[j]]
        if len(chosen) >= len(names):
            raise ValueError(f"novel person {person} has {len(names)} files in {len(keys)} recording(s); "
                             f"{test_per_person} test files would leave no pool to draw shots from")
        test[person] = sorted(chosen)
        pool[person] = sorted(set(names) - set(chosen))
    return pool, test


def draw_shots(pool: dict[str, list[str]], k: int, draw: int) -> dict[str, list[str]]:
    """The k shots of every novel person in shot draw ``draw``: the first k of a permutation of the person's pool
    seeded by (draw, person's position in sorted order), so a smaller k's shots are part of a larger k's."""
    shots = {}
    for i, person in enumerate(sorted(pool)):
        names = sorted(pool[person])
        if k > len(names):
            raise ValueError(f"novel person {person} has {len(names)} pool files, fewer than k = {k}")
        order = np.random.default_rng([draw, 13, i]).permutation(len(names))
        shots[person] = sorted(names[j] for j in order[:k])
    return shots


# ----------------------------------------------------------------------------------------------------------------
# Who may see what
# ----------------------------------------------------------------------------------------------------------------
def allowed_files(variant: str, shots: dict[str, list[str]], pool: dict[str, list[str]]) -> list[str]:
    """The novel people's real files a variant trains on: the shots for every variant but the oracle, which gets the
    whole pool. (The generative variants also get samples of a generator, accepted only by check_generator.)"""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; the variants are {', '.join(VARIANTS)}")
    source = pool if variant == CEILING else shots
    return sorted(name for person in sorted(source) for name in source[person])


def check_generator(provenance: dict | None, test_files: list[str], shots: dict[str, list[str]]) -> None:
    """Accept a generator for the generative variants of a unit, or raise a one-line ValueError naming the file.

    Refused: an unknown provenance, a generator that saw any scored test file, one that saw more files of a novel
    person than the k the variants get (ldm.pipeline.check_provenance), and one that saw a novel person's file other
    than that person's shots, even within k (the samples would carry labels the variants do not have)."""
    check_provenance(provenance, set(test_files), {person: len(names) for person, names in shots.items()})
    seen = {name for name in provenance["trained_on"]["files"]}
    for record in provenance["enrolled"].values():
        seen.update(record["files"])
    for name in sorted(seen):
        person = person_of(name)
        if person in shots and name not in shots[person]:
            raise ValueError(f"the generator saw {name}, a file of the scored person {person} that is not one of "
                             f"the {len(shots[person])} shots every variant gets")


# ----------------------------------------------------------------------------------------------------------------
# The variants without a CNN of their own
# ----------------------------------------------------------------------------------------------------------------
def nearest_mean(support: torch.Tensor, labels: torch.Tensor, queries: torch.Tensor, num_classes: int,
                 extra: torch.Tensor | None = None, extra_labels: torch.Tensor | None = None) -> torch.Tensor:
    """Nearest class mean by cosine similarity (prototypical classification on L2-normalised features).

    support: (N, D) features with labels (N,) in [0, num_classes); queries: (M, D). With ``extra`` (M', D) features
    and their labels (generated samples), each class's prototype is the average of its support mean and its extra
    mean (equal weight, so many samples cannot drown out the real shots). Returns (M,) predicted labels."""
    def class_means(f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        f = F.normalize(f.double(), dim=1)
        onehot = F.one_hot(y.long(), num_classes).double()                       # (N, P)
        counts = onehot.sum(0)
        if (counts == 0).any():
            raise ValueError(f"every class needs a sample; class {int((counts == 0).nonzero()[0])} has none")
        return (onehot.T @ f) / counts[:, None]                                   # (P, D)

    prototypes = class_means(support, labels)
    if extra is not None:
        prototypes = (prototypes + class_means(extra, extra_labels)) / 2
    scores = F.normalize(queries.double(), dim=1) @ F.normalize(prototypes, dim=1).T   # (M, P)
    return scores.argmax(dim=1)


def physics_vectors(features: list[dict[str, float]]) -> np.ndarray:
    """(N, 2) [torso speed |v| m/s, cadence steps/s] from physics_features dicts (speed: walks both ways count the
    same); NaN where a cadence could not be measured."""
    return np.array([[abs(f["torso_velocity_mps"]), f["cadence_steps_per_s"]] for f in features], dtype=np.float64)


def nearest_centroid(support: np.ndarray, labels: np.ndarray, queries: np.ndarray, num_classes: int,
                     scale: np.ndarray) -> np.ndarray:
    """Nearest centroid in feature units of ``scale`` (D,) (the base people's within-person standard deviations):
    per class the NaN-ignoring mean of its support rows (N, D); a query (M, D) goes to the class with the smallest
    sum over its finite features of ((q - centroid) / scale)^2. Returns (M,) labels."""
    centroids = np.stack([np.nanmean(support[labels == c], axis=0) for c in range(num_classes)])   # (P, D)
    z = (queries[:, None, :] - centroids[None]) / scale                                       # (M, P, D)
    distance = np.where(np.isfinite(z), z * z, 0.0).sum(axis=2)
    return distance.argmin(axis=1)


# ----------------------------------------------------------------------------------------------------------------
# One unit: every variant on one set of shots
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class NovelData:
    """The novel people's real files, loaded once: x (N, C, H, W) in [-1, 1], labels (N,) in [0, P) in sorted
    person order, names (N,) relative file names, physics (N, 2) physics_vectors; test: the scored names."""
    x: torch.Tensor
    labels: torch.Tensor
    names: list[str]
    physics: np.ndarray
    test: list[str]

    def rows(self, names: list[str]) -> torch.Tensor:
        """Row indices of the given file names."""
        where = {name: i for i, name in enumerate(self.names)}
        missing = [name for name in names if name not in where]
        if missing:
            raise ValueError(f"{missing[0]} is not one of the novel people's files")
        return torch.tensor([where[name] for name in names], dtype=torch.long)


@dataclass
class Generated:
    """Samples of the enrolled novel people: x (M, C, H, W) in [-1, 1], labels (M,) requested person, physics (M, 2),
    and the provenance of the generator that made them (Pipeline.provenance): score_unit checks it before use."""
    x: torch.Tensor
    labels: torch.Tensor
    physics: np.ndarray
    provenance: dict | None


def score_unit(data: NovelData, shots: dict[str, list[str]], pool: dict[str, list[str]], clf: ClassifierConfig,
               classic: ClassicAugment, embedding: EvalCNN, physics_scale: np.ndarray,
               generated: Generated | None, variants: tuple[str, ...] = VARIANTS) -> dict:
    """Train and score the variants of one (generator seed, shot draw, k) on the scored test files.

    Every variant's real training rows come from allowed_files (the shots; the oracle: the pool); a test file is
    never a training row (checked). ``generated`` (the enrolled people's samples) feeds only the "+enrolled"
    variants, and only after check_generator accepted its provenance against these shots and data.test: samples of a
    generator that saw a test file, or any novel file beyond the shots, are refused here, whoever made them. Without
    it the "+enrolled" variants are skipped. Returns {"predictions": {variant: (T,) list of predicted labels of the
    test files, in data.test order}, "labels": (T,), "trained_on": {variant: novel files}}."""
    if generated is not None:
        check_generator(generated.provenance, data.test, shots)
    test_rows = data.rows(data.test)
    x_test, y_test = data.x[test_rows], data.labels[test_rows]
    shot_rows = data.rows(allowed_files("real", shots, pool))
    x_k, y_k = data.x[shot_rows], data.labels[shot_rows]
    if set(allowed_files("oracle", shots, pool)) & set(data.test):
        raise ValueError("a pool file is also a test file")
    num_classes = clf.num_classes
    predictions, trained_on = {}, {}

    def cnn(x, y, augment=None):
        order = balanced_indices(y, torch.Generator().manual_seed(clf.seed))      # every person equally often
        model = train_classifier(x[order], y[order], clf, augment=augment)
        return predict(model, x_test)[0].argmax(1)

    for variant in variants:
        if variant.endswith("+enrolled") and generated is None:
            continue
        trained_on[variant] = allowed_files(variant, shots, pool)
        if variant == "real":
            predictions[variant] = cnn(x_k, y_k)
        elif variant == "classic":
            predictions[variant] = cnn(x_k, y_k, augment=classic)
        elif variant == "real+enrolled":
            predictions[variant] = cnn(torch.cat([x_k, generated.x]), torch.cat([y_k, generated.labels]))
        elif variant == "oracle":
            rows = data.rows(trained_on[variant])
            predictions[variant] = cnn(data.x[rows], data.labels[rows])
        elif variant in ("embedding", "embedding+enrolled"):
            f_k, f_test = predict(embedding, x_k)[1], predict(embedding, x_test)[1]
            if variant == "embedding":
                predictions[variant] = nearest_mean(f_k, y_k, f_test, num_classes)
            else:
                f_gen = predict(embedding, generated.x)[1]
                predictions[variant] = nearest_mean(f_k, y_k, f_test, num_classes, f_gen, generated.labels)
        elif variant == "physics":
            predictions[variant] = torch.from_numpy(nearest_centroid(
                data.physics[shot_rows.numpy()], y_k.numpy(), data.physics[test_rows.numpy()], num_classes,
                physics_scale))
        overlap = set(trained_on[variant]) & set(data.test)
        if overlap:
            raise ValueError(f"variant {variant} would train on the test file {sorted(overlap)[0]}")
    return {"predictions": {v: [int(p) for p in pred] for v, pred in predictions.items()},
            "labels": [int(y) for y in y_test], "trained_on": trained_on}


def per_person_hits(predictions: list[int], labels: list[int], num_classes: int) -> list[int]:
    """(P,) correct predictions per true person."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    return [int(((predictions == labels) & (labels == c)).sum()) for c in range(num_classes)]


def with_seed(clf: ClassifierConfig, seed: int) -> ClassifierConfig:
    """The classifier recipe with another initialisation and batch-order seed."""
    return replace(clf, seed=seed)


def summary_markdown(summary: dict) -> str:
    """The result tables (docs/augmentation.md's measured section, make demo's report) from fewshot.py's summary
    (fewshot.json): accuracies, the primary and secondary contrasts, identity of the samples, the physics table."""
    def ci(c, signed=False):
        f = "+.3f" if signed else ".3f"
        return f"[{c[0]:{f}}, {c[1]:{f}}]"

    lines = ["| k | variant | accuracy | 95% interval | generator seeds x shot draws |", "|---|---|---|---|---|"]
    for r in summary["rows"]:
        lines.append(f"| {r['shots']} | {r['variant']} | {r['accuracy']:.3f} | {ci(r['ci'])} | "
                     f"{r['seeds']} x {'/'.join(str(d) for d in r['draws'])} |")
    if summary.get("oracle"):
        o = summary["oracle"]
        lines.append(f"| all | oracle (all {o['pool_files_per_person']} pool files per person; the ceiling) | "
                     f"{o['accuracy']:.3f} | {ci(o['ci'])} | {o['seeds']} x - |")
    p = summary.get("primary")
    if p:
        lines += ["", f"**Primary contrast** (k = {p['shots']}): {p['variant']} minus {p['against']} (the best "
                      f"non-generative variant) = **{p['difference']:+.3f}** {ci(p['ci'], True)} (95%, bootstrap "
                      f"p = {p['p']:.3f})."]
    if summary["secondary"]:
        lines += ["", "| k | contrast | difference | interval (Holm level) | Holm-adjusted p |", "|---|---|---|---|---|"]
        for s in summary["secondary"]:
            lines.append(f"| {s['shots']} | {s['variant']} - {s['against']} | {s['difference']:+.3f} | "
                         f"{ci(s['ci'], True)} ({s['level']:.4f}) | {s['p_holm']:.3f} |")
    if summary["identity_of_samples"]:
        lines += ["", "| k | enrolled samples identified as their person (oracle classifier) | person-clustered 95% "
                      "interval | chance |", "|---|---|---|---|"]
        for r in summary["identity_of_samples"]:
            lines.append(f"| {r['shots']} | {r['accuracy']:.3f} | {ci(r['ci'])} | {r['chance']:.3f} |")
    if summary["physics_table"]:
        lines += ["", "| k | feature | real walk-to-walk std (median over people) | generated std / real std | "
                      "|generated mean - real mean| / real std |", "|---|---|---|---|---|"]
        for r in summary["physics_table"]:
            values = [r["real_std_median"], r["std_ratio_median"], r["mean_offset_in_real_std_median"]]
            shown = ["-" if v is None else f"{v:.3f}" for v in values]      # None: not measurable (NaN)
            lines.append(f"| {r['shots']} | {r['feature']} | {' | '.join(shown)} |")
    return "\n".join(lines) + "\n"
