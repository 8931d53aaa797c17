"""Benchmark: listing heads (image + title) against image-only heads and a strong title-only probe.

On ``configs/fashion.yaml`` rows (text column productDisplayName), the parts ``prepare_catalog`` makes
for the heads recipe (seeded train/dev/test per category, identical images kept in one part, schema from
the training rows): every model is fitted on train, chooses its settings on dev, and is scored on the
same test rows (those with a readable image).

- image-only: the heads recipe's model on frozen efficientnet-lite0 + colour features, deciding with
  the listing heads' ``train.class_balance`` (its own strengths, chosen on dev): the very heads a listing
  without a title falls back to;
- text-only: TF-IDF word 1–2-grams + char 2–5-grams ⊕ category, one logistic regression per attribute
  (``TextAttributeClassifier``), its C chosen on dev;
- fused: listing heads (``heads.inputs: [image, text]``: sentence embedding, cross-fitted lexical probe,
  n-gram bag), concat and gated fusion both trained (one seed each), the one with the better dev score
  kept; the reported model is that fusion as the recipe trains it with ``--members`` seeds
  (``heads.members``, default 4) and ``--class-balance`` (``train.class_balance``, default ``dev``: a
  prior correction per attribute, chosen on dev for titled rows and for rows without a title apart);
  rows without a title go to the image-only heads above, which the listing checkpoint carries
  (``text.image_fallback``, as the recipe trains it).

Also: the same with the titles of a seeded random half of the test rows blanked, the fused model with
every title blanked and with every image missing, per-attribute ECE after per-attribute temperature
(fitted on dev), training seconds, and predict throughput of both checkpoints in the same run. Every
test score comes with its bootstrap interval and every target gap with its paired one
(``taxonomist.metrics.bootstrap_scores``: ``--resamples`` resamples of the test rows within each category).
Writes ``benchmarks/results/multimodal-fpi.json`` and a section of ``docs/benchmarks.md``.
Usage: ``python benchmarks/multimodal.py [--predict-images 1000] [--set key=value ...]``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from common import machine, replace_section, score_row, score_table_head

from taxonomist.config import RunConfig, load_config
from taxonomist.data.catalog import CATEGORY, ID, TEXT, expand_path, read_table
from taxonomist.data.labels import MISSING, encode_labels
from taxonomist.data.prepare import prepare_catalog
from taxonomist.features.build import embed_options
from taxonomist.features.embed import embed_catalog
from taxonomist.features.text import TextFeatures
from taxonomist.inference.predictor import Predictor
from taxonomist.metrics import attribute_score, expected_calibration_error
from taxonomist.metrics.bootstrap import RESAMPLES, Interval, bootstrap_scores
from taxonomist.models.build import heads_checkpoint
from taxonomist.models.checkpoint import decision_scores
from taxonomist.models.heads import NEG_INF, allowed_masks
from taxonomist.training.heads import (
    FeatureSet,
    build_heads,
    embedding_backbone,
    fit_calibration,
    fit_heads,
    fit_recipe_heads,
    hidden_present,
    listing_text,
    logits_to_frame,
    predict_decisions,
    predict_logits,
    predict_probs,
    set_text,
    text_record,
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "multimodal-fpi.json"
DOCS = ROOT / "docs" / "benchmarks.md"
HEADING = "## Listings: image + title → attributes (fashion-product-images)"
PROBE_C = (5.0, 20.0, 60.0)
# Explorations on this benchmark's split and features (listing heads retrained on the cached features of
# an earlier recorded run, concat fusion; the test score was printed beside dev, so these are not blind to
# it). Single-model changes stay within the seed spread (sd 0.0044 on test). Built from them: the mean
# of four seeds with a per-attribute prior correction chosen on dev (``heads.members``,
# ``train.class_balance: dev``), now the reported default; one seed without it is in the results too.
TRIED = [
    "text_dropout 0 / 0.1 / 0.3 (kept): dev 0.8670 / 0.8641 / 0.8659, test 0.8472 / 0.8499 / 0.8567; "
    "with the image fallback scoring blank titles, dropout only regularises (best epoch 1 / 4 / 8)",
    "lr 5e-4 (2e-3 kept): dev 0.8613, test 0.8479; heads dropout 0.4 + weight decay 0.01: dev 0.8654, "
    "test 0.8508",
    "logit adjustment (−s · log prior) per attribute, s in {0, .25, .5, .75, 1} chosen on dev, on each "
    "of the 5 single models: dev +0.001 to +0.006, test −0.010 to +0.001",
    "mean probability of the three text-dropout models: dev 0.8655, test 0.8546; with the logit "
    "adjustment above dev 0.8752, test 0.8573 (not adopted: three models for +0.0006 on test, and a dev "
    "gain from an adjustment that did not carry to test on the single models)",
    "seeds: the recorded settings with train.seed 0 (recorded) / 1 / 2 / 3: dev 0.8659 / 0.8630 / 0.8587 / "
    "0.8626, test 0.8567 / 0.8589 / 0.8579 / 0.8492 (mean 0.8557, sd 0.0044); season moves 0.70-0.76 and "
    "usage 0.78-0.84 between seeds (macro-F1 over rare values). Mean of the four: dev 0.8653, test 0.8574; "
    "with the per-attribute logit adjustment dev 0.8761, test 0.8634",
    "kNN label posteriors mixed into the fused probabilities (weight per attribute chosen on dev), on the "
    "frozen MiniLM title embeddings or the image features, k {10, 30} x T {0.02, 0.05}: dev 0.8679-0.8723, "
    "test 0.8502-0.8552",
    "a stronger image side: efficientnet-lite2 features (260 px, + colour) instead of lite0: image-only "
    "test 0.6687 (lite0 0.6650), fused dev 0.8622, test 0.8462; lite0 and lite2 features concatenated: "
    "image-only 0.6611, fused dev 0.8647, test 0.8545",
    "a fine-tuned title model as a late-fusion member: all-MiniLM-L6-v2 fine-tuned on the six attributes "
    "(category-masked cross-entropy, 3 epochs, encoder lr 8e-5, 868 s), alone dev 0.8202 / 0.8503 / 0.8572 "
    "and test 0.8091 / 0.8347 / 0.8399 after epochs 1 / 2 / 3 (the TF-IDF probe: test 0.8430); its "
    "probabilities mixed with the fused heads' at weight w in {0.1 .. 0.5} chosen on dev: epoch 3, w 0.5, "
    "dev 0.8695, test 0.8560 against 0.8567 alone",
    "stacking instead of joint heads: a logistic regression per attribute (C 0.1) over out-of-fold "
    "image-head log-probabilities (5 folds), the cross-fitted probe's and the category: dev 0.8254, test "
    "0.8181; mixed "
    "with the fused heads at w in {0.3, 0.5, 0.7}: dev 0.8412-0.8612, test 0.8347-0.8507",
    "values named in the title: where a title names exactly one value of an attribute (whole words, "
    "case-folded; 2590 of 3232 test rows for baseColour, 96.5% of them the true value), that value as "
    "the prediction: baseColour dev 0.8683, test 0.8600 (+0.0024 / +0.0033), with gender too dev 0.8685, "
    "test 0.8604, with usage too dev 0.8638, test 0.8599; as 236 indicator features of the listing "
    "heads, seeds 0 / 1: dev 0.8614 / 0.8663, test 0.8536 / 0.8561 (baseColour +0.02, season −0.03 to "
    "−0.04 moved by the seed)",
    "5-fold cross-fitted listing heads (each fold's model on 80% of train, epoch on dev), their mean: "
    "dev 0.8680, test 0.8537; the prior-correction strength chosen on their out-of-fold train "
    "predictions (25,878 rows) instead of dev, per attribute / per (category, attribute) pair: test "
    "0.8505 / 0.8546 (chosen on dev: 0.8594 / 0.8558)",
    "label smoothing 0.1: dev 0.8622, test 0.8400; trunk widths [1024, 512] / [1024] (image fallback off): "
    "dev 0.8597 / 0.8634, test 0.8406 / 0.8452; text.lexical_width 256: dev 0.8614, test 0.8495; batch "
    "size 128: dev 0.8653, test 0.8432",
    "background statistics of the photo (mean and std RGB of the border pixels, share of white ones) "
    "beside the image features: image-only test 0.6792 (0.6650 without), fused seeds 0 / 1 dev 0.8662 / "
    "0.8671, test 0.8513 / 0.8482",
    "why season stays lowest: on this catalogue it is largely a property of the photo batch, not the "
    "garment. A gradient-boosted classifier on the JPEG quantisation tables, file size and border pixels "
    "alone (no product content) predicts season at 0.67 test accuracy (border pixels alone 0.64, the "
    "majority 0.49). Encoder settings were not used as features: they are not what a listing shows",
    "calibration of the four-seed mean with the per-attribute prior correction added to the logits "
    "before the temperature (the earlier rule; its full run: dev 0.8761, test 0.8634, season test ECE "
    "0.0214): season's NLL-fitted temperature (1.03) leaves dev ECE at 0.023 as well. On the cached "
    "seeds' logits, a temperature per (category, attribute) gives season test ECE 0.0188; the temperature "
    "fitted on the logits alone, with the correction only choosing each row's value and the confidence "
    "that value's calibrated probability, 0.0165 (built: `decision_scores`). Its first full run, with the "
    "titled rows' strengths applied to rows without a title too: test 0.8631, max ECE 0.0165, but the "
    "blank-title score 0.0254 above the uncorrected image-only heads; rows without a title now get "
    "strengths chosen for them on dev, and the image-only heads decide with the same setting",
    "values named in the title as a soft bonus (+β on the logit of each value the title names, β per "
    "attribute in {0, .5, 1, 2, 4} chosen on dev with the correction strengths; cached four-seed "
    "logits): dev 0.8792, test 0.8635 against 0.8631 without",
    "throughput of the earlier one-seed recorded run (ratio 0.76), checked after it: its two checkpoints "
    "timed again in a fresh process (best of 2 rounds, the same 1000 test images) gave image 99.0, fused "
    "88.9 img/s (ratio 0.90); that run's image-only 110.1 img/s is the fastest of the four measurements "
    "(92.9, 96.2, 99.0, 110.1) while fused stayed at 83.8-88.9, so its 0.76 is this machine's noise on the "
    "image-only side",
    "decision rules over the cached four-seed calibrated probabilities (the recorded run: dev 0.8751, test "
    "0.8631): per (category, attribute) weights on each value maximising the expected harmonic F1 under the "
    "model's own dev probabilities: dev 0.8713, test 0.8608; the same weights fitted to dev's labels: dev "
    "0.8954, test 0.8543 (overfit); fitted to the test rows' own probabilities, for information: test "
    "0.8641. Joint decoding of articleType with subCategory / gender / usage over the pairs seen in "
    "training: test 0.8629 / 0.8631 / 0.8631; with a co-occurrence prior (0.5 log P(y | articleType)) on "
    "gender / usage / season: test 0.8611 / 0.8532 / 0.8588",
    "one seed each (seed 0; the recorded settings: dev 0.8659, test 0.8567): text.image_dropout 0.2 dev "
    "0.8639, test 0.8487; text_dropout 0.5 dev 0.8639, test 0.8448; gated fusion dev 0.8634, test 0.8577; "
    "the mean of those four models with the per-attribute correction: dev 0.8745, test 0.8516",
    "a fine-tuned image backbone as the listing heads' image side (two stages: fine-tune the image heads "
    "end to end, then embed with its backbone): recipe finetune on all 25,922 training rows, 128 px, 2 "
    "epochs (backbone lr 2e-4, colour jitter 0.1, no phase 2; 28 min at 32 img/s) scored dev 0.6582 "
    "against its own warm start on frozen features 0.6637 (epoch 1: 0.6139), below the frozen 224 px "
    "image heads (dev 0.6880), so its features were not tried in the listing heads; the 12,000-row run "
    "of benchmarks/finetune.py needed 8 epochs (40 min) for its +0.056",
    "refit on train + dev: each of the four seeds trained again on both parts (29,112 rows) for its "
    "dev-chosen epoch + 1 (9/4/8/4), scored with the temperatures and correction strengths fitted on the "
    "train-only seeds' dev logits: test 0.8619 against 0.8631 for the train-only seeds (baseColour +0.009, "
    "usage -0.014)",
    "test-time mirroring on the image side: the CNN features the mean of the image's and its mirror's "
    "(embed_catalog view hflip; training, dev and test rows alike): image-only test 0.6740 (0.6650 "
    "without); listing seeds 0-3 dev 0.8646 / 0.8706 / 0.8624 / 0.8635, test 0.8470 / 0.8375 / 0.8533 / "
    "0.8528; their mean test 0.8546 (0.8574 without), with the per-attribute correction added to the "
    "logits dev 0.8712, test 0.8537 (0.8634 without)",
    "everything that rose on dev, together: the mean of the four seeds, the per-attribute prior adjustment "
    "chosen on dev and the named-colour rule: dev 0.8766, test 0.8660 (the mean alone 0.8574, with the "
    "adjustment 0.8634, with the colour rule 0.8599)",
    "a partly fine-tuned image side (cheaper than the full fine-tune above): the last layers of "
    "efficientnet-lite0 trained with the image heads on cached 224 px inputs of block 14 (all training "
    "rows, mirrored at random, BatchNorm frozen, heads warm-started on the frozen features, heads lr 3e-4, 4 "
    "epochs; dev argmax against the same heads on the frozen features): block 15 + head convolution at "
    "lr 2e-4 dev 0.6742 against 0.6739; blocks 14-15 + head convolution at lr 5e-4 dev 0.6848 against "
    "0.6741 (3.5 min an epoch). Those features in the reported setting (4 seeds, correction chosen on "
    "dev): image-only test 0.6629 (0.6679 frozen), listing heads dev 0.8723, test 0.8561 (0.8751 / "
    "0.8631 frozen; one seed dev 0.8627, test 0.8495), lower on dev too; a likely cause, not measured: "
    "features tuned on the training rows fit those rows better than dev and test rows, and the heads "
    "trained on them learn to trust them too much",
    "rare values left out: at decision time, a value with fewer than m training rows in the row's "
    "category never chosen (the recorded run's four-seed decisions, reproduced: dev 0.8751, test 0.8630), "
    "m in {2, 3, 5, 8, 12}: dev 0.8743 / 0.8715 / 0.8675 / 0.8548 / 0.8218, test 0.8611 / 0.8583 / "
    "0.8556 / 0.8447 / 0.8256; chosen per attribute on dev, every attribute keeps m 0",
    "categories oversampled towards the metric's equal weight per (category, attribute) pair: each "
    "training row repeated round((n_largest / n_category)^0.5) times (Footwear x2, Personal Care x3; "
    "image and listing heads): image-only test 0.6646 (0.6678 without), listing heads (4 seeds, "
    "correction chosen on dev) dev 0.8726, test 0.8562 (0.8751 / 0.8630 without), season test ECE 0.031",
    "heads.members 8 instead of 4 (seeds 0-7, correction chosen on dev): dev 0.8746, test 0.8596 "
    "(4 members: 0.8751 / 0.8630), max ECE 0.0168",
    "text.probe_c (the listing heads' cross-fitted probe; 20 kept) 5 / 60: one seed dev 0.8610 / 0.8603, "
    "test 0.8433 / 0.8455 (C 20: 0.8659 / 0.8567); 4 seeds with the correction chosen on dev: dev 0.8746 / "
    "0.8690, test 0.8564 / 0.8487 (C 20: 0.8751 / 0.8630)",
    "train.epochs 10 instead of 40 (the cosine schedule then anneals to 0 by epoch 10; at 40 the four "
    "seeds' dev picks were epochs 3-8, while the learning rate is still near its peak): image-only test "
    "0.6796 (0.6678 at 40); listing heads one seed dev 0.8607, test 0.8512, 4 seeds with the correction "
    "chosen on dev: dev 0.8723, test 0.8636 (0.8751 / 0.8630 at 40), season test ECE 0.0198. Not adopted "
    "for the listing heads (dev lower, test within the seed spread); for the image heads it would change "
    "benchmarks/attributes.py's recorded image-only results, which this issue keeps fixed",
    "an exponential moving average of the listing heads' weights (decay 0.995 a step, about two epochs), "
    "the epoch chosen on dev with the averaged weights: one seed dev 0.8648, test 0.8542 (0.8659 / 0.8567 "
    "without); 4 seeds dev 0.8742, test 0.8625 (0.8751 / 0.8630)",
    "other poolings of the frozen lite0 features: block 14's pooled input (192 mid-level channels) beside "
    "the final 1280 + colour: image-only test 0.6642, listing heads (4 seeds) dev 0.8751, test 0.8580; "
    "GeM pooling (p 3) of the final map instead of the mean: image-only test 0.6547, listing heads dev "
    "0.8768, test 0.8611 (mean pooling: 0.6678; 0.8751 / 0.8630)",
    "category-specific copies of the text probe's n-gram features beside the shared ones (Daume 2007's "
    "feature augmentation; one logistic regression per attribute as before), text-only C 5 / 20: dev "
    "0.8638 / 0.8606, test 0.8460 / 0.8483 (the shared features at C 20: dev 0.8627, test 0.8430); a fit "
    "took 22 minutes with two sharing the 2 cores (the shared features: 8 minutes alone); not carried "
    "into the listing heads' cross-fitted probe (five such fits) for +0.001 on dev",
    "the text probe's own probabilities mixed into the listing heads' decision scores (log-linear, a weight "
    "per attribute in {0, .1 .. .5} chosen on dev; the recorded run's four-seed outputs): weights gender 0, "
    "subCategory .1, articleType .5, baseColour .1, season 0, usage .1 give dev 0.8800, test 0.8620 "
    "(0.8751 / 0.8630 without): +0.005 on dev, none of it on test; one weight for "
    "all, .1 / .3 / .5: dev 0.8766 / 0.8708 / 0.8704, test 0.8628 / 0.8558 / 0.8485",
    "Personal Care season, where test macro-F1 counts one rare value (5 Summer rows of 174; dev 3): the "
    "recorded model ranks dev's Summer rows 11th, 33rd and 34th by their Summer probability, so no "
    "threshold chosen on dev predicts Summer for any row, and the pair stays at 0.65-0.66 on both parts",
    "the image side's last layers trained together with the listing heads (end to end from cached 224 px "
    "inputs of efficientnet-lite0's block 14: blocks 14-15 + head convolution, BatchNorm frozen, random "
    "mirroring, text features cached, text dropout 0.3; 3.5 min an epoch), warm-started from seed 0's "
    "listing heads on the frozen features (dev 0.8657, test 0.8566): image layers lr 5e-4 with heads lr "
    "2e-4, dev after epochs 1-4 0.8543 / 0.8546 / 0.8624 / 0.8602; heads held fixed, image layers lr 2e-4, "
    "0.8608 / 0.8638 / 0.8649; the same loop with the image side frozen (heads lr 2e-4) 0.8603 / 0.8594 / "
    "0.8591 / 0.8590. No epoch beat the warm start on dev, so none was scored on test: trained jointly "
    "rather than in two stages, the tuned layers do not help either",
    "the title encoder trained together with the listing heads (all-MiniLM-L6-v2's sentence embedding "
    "computed live, mean pooling + L2 norm as the cached one; probe probabilities, n-gram bag and image "
    "features cached; text dropout 0.3; 4.7 min an epoch), warm-started from seed 0's listing heads on "
    "the frozen features (dev 0.8657, test 0.8566): encoder lr 3e-5 with heads lr 2e-4, dev after epochs "
    "1-3 0.8616 / 0.8626 / 0.8593; heads held fixed, encoder lr 3e-5, 0.8617 / 0.8583 / 0.8628. No epoch "
    "beat the warm start on dev, so none was scored on test; like the encoder fine-tuned alone "
    "as a late-fusion member (above), tuning the title encoder does not help on CPU",
    "Accessories usage, the pair that falls most from dev to test (0.79 to 0.67): its test rows hold one "
    "Party row (never predicted, F1 0) and no Travel row, while the recorded model predicts Travel for "
    "two Casual rows, which adds a second value at F1 0 to the macro mean (0.518 over 7 values). With "
    "those two rows decided Casual the pair reads 0.740 and the whole test score 0.8659 instead of "
    "0.8631: two rows of 3,234 move the score by 0.003, two thirds of the seed-to-seed sd (0.0044)",
    "the label of the same-title training row with the nearest image (`inspect`: 12,104 rows share their "
    "title with another row of their category, 5,120 of them with different labels; a third of dev and "
    "test rows have a same-title training row): where its image cosine is at least a threshold chosen "
    "per attribute on dev from {0 .. 0.99}, that row's label replaces the decision (the recorded four-"
    "seed outputs). On those rows the model already agrees with the copy (season at cosine ≥ 0.9: copy "
    "0.941, model 0.919 on test, but 0.893 against 0.910 on dev): chosen season 0.85, usage 0, "
    "subCategory 0, dev 0.8762, test 0.8602 (0.8751 / 0.8630 without)",
    "the catalogue's year as an auxiliary training target (a seventh attribute trained and scored beside "
    "the six, never an input; season follows the photo batch, and the year names it: 2011 Fall/Summer, "
    "2015-16 Winter, 2017 Spring), one member each through `taxonomist train` with "
    "train.class_balance=dev, the six attributes scored from evaluate's pairs: dev 0.8659, test 0.8544 "
    "against dev 0.8671, test 0.8506 without (season +0.010 dev, +0.014 test; usage -0.035 dev, -0.005 "
    "test). Lower on dev, so not adopted; season's gain alone is worth about +0.002 of the score",
    "training labels that disagree with their title masked. Where the remaining test errors are: in 109 "
    "of the recorded model's test label cells the title names the predicted value and not the label "
    "(articleType 21, e.g. 'Senorita Women Black Heels' filed as Flats; baseColour 72; others 16), and "
    "were those labels as the title says the score would read 0.8798. The training rows hold the same "
    "kind of disagreement, so label cells whose title names exactly one other value of the category "
    "(`inspect`'s rule; a value whose every training label would go keeps them) were masked in training "
    "only, one member each through `taxonomist train` with train.class_balance=dev: gender, "
    "articleType, baseColour and usage (1,797 cells) dev 0.8614, test 0.8459; baseColour alone (812) "
    "dev 0.8629, test 0.8469; against dev 0.8671, test 0.8506 unmasked. baseColour rose (dev harmonic "
    "+0.011 to +0.013) and articleType fell (-0.014 with its cells masked): the catalogue files "
    "articles by its own conventions, and the model learns them from those rows too. Lower on dev, so "
    "not adopted",
    "a cross-attribute stacker over the recorded run's outputs: per attribute, a logistic regression (C "
    "0.1) on the log-probabilities of all six attributes and the category, fitted on dev (5-fold "
    "out-of-fold scores for choosing), mixed log-linearly into the decision scores at a weight per "
    "attribute in {0, .1 .. 1} chosen on the out-of-fold dev scores: only season takes a weight (.1), "
    "dev 0.8755, test 0.8633 (0.8751 / 0.8631 without); one weight for all, .1 / .3: dev 0.8686 / "
    "0.8496, test 0.8615 / 0.8480. The other attributes' outputs add nothing the heads have not used",
    "star-structured joint decoding around articleType over the recorded run's outputs: the four-seed "
    "decision scores (log-softmax over each category's values) as unary terms, lambda x PMI(articleType, "
    "X) from the training rows' counts (add-0.5) as pairwise terms for the other five attributes, lambda "
    "per attribute in {0, .1, .25, .5, 1} chosen on dev: only season takes one (.25), dev 0.8755, test "
    "0.8614 (0.8751 / 0.8630 without); one lambda for all, .25 / .5 / 1: dev 0.8665 / 0.8615 / 0.8450, "
    "test 0.8513 / 0.8346 / 0.8202. The joint heads already carry these dependencies; the pairwise terms "
    "move rare-value rows off their right answer",
    "the gated fusion's one-seed figures across three runs of this benchmark: dev 0.8634 / 0.8645 / "
    "0.8647, test 0.8577 / 0.8556 / 0.8451. Between the last two the one difference is the titles "
    "embedded again under the encoder's new fingerprint (scheme 2): 18% of the 23,823 title embeddings "
    "differ, by at most 2.1e-7 (batches padded to other lengths), which leaves concat's dev and test "
    "scores identical to every digit while gated's test moves by 0.01. The gated trunk amplifies input "
    "noise of that size, so its one-seed gap to concat is within that noise; concat is chosen on dev "
    "either way",
    "throughput of the run recorded here (ratio 0.80; the run before it, same settings and scores: 86.9 "
    "image, 82.3 fused img/s, 0.95): its two checkpoints timed again in a fresh process, four rounds "
    "alternated, best of each: image 90.4, fused 72.2 img/s (0.80). A profile of the fused predict of "
    "the 1000 images: 14.4 s, of which the image side 11.6 s and the title features 2.2 s (all-MiniLM-"
    "L6-v2 on OpenVINO 1.8 s; each distinct title is encoded once), so about 0.84 is this machine's "
    "ratio, and rounds move it by about 0.05 either way. The titles encoded in a thread while the "
    "images are, timed interleaved with the sequential predict in one process (four rounds): best 70.2 "
    "against 67.8 img/s, ratio 0.86 against 0.83 (image 81.8), within the rounds' spread; not adopted",
]


class Bench:
    """The catalog, split, schema and label codes every model of one run shares."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        data = prepare_catalog(cfg)  # the heads recipe's own parts and training-rows schema
        self.catalog, self.schema, split = data.catalog, data.schema, data.split
        frame = self.catalog.frame
        self.categories = list(self.schema.categories)
        index = {c: i for i, c in enumerate(self.categories)}
        self.category = np.array([index[c] for c in frame[CATEGORY]])
        self.labels = encode_labels(frame, self.schema)
        self.masks = allowed_masks(self.schema, self.categories)
        self.texts = frame[TEXT].tolist()
        self.split = split

    def truth(self, rows: np.ndarray) -> pd.DataFrame:
        return self.catalog.frame.iloc[rows].reset_index(drop=True)

    def predict(self, rows: np.ndarray, logits: dict) -> pd.DataFrame:
        """Each of ``rows``' values from logits (masked here to each row's category)."""
        frame = self.truth(rows)
        category = torch.as_tensor(self.category[rows])
        masked = {
            a: torch.as_tensor(np.asarray(z), dtype=torch.float32).masked_fill(
                ~self.masks[a][category], NEG_INF
            )
            for a, z in logits.items()
        }
        return logits_to_frame(masked, frame[ID].tolist(), frame[CATEGORY].tolist(), self.schema)

    def report(self, rows: np.ndarray, pred: pd.DataFrame) -> object:
        """Competition-metric report of ``rows`` predicted as ``pred``."""
        return attribute_score(self.truth(rows), pred, self.schema.categories)

    def score(self, rows: np.ndarray, logits: dict) -> object:
        return self.report(rows, self.predict(rows, logits))


def per_attribute(report) -> dict[str, float]:
    table = report.per_attribute
    return dict(zip(table["attribute"], table["harmonic"].astype(float), strict=True))


def probe(
    config: str, overrides: list[str], parts: list[list[int]], blank: list[int], grid: list[float]
) -> dict:
    """The text-only probe (run in its own process, beside the heads): C chosen on dev, test scored
    with full titles and with the ``blank`` test rows' titles removed."""
    from taxonomist.models.text_attributes import TextAttributeClassifier

    torch.set_num_threads(1)
    bench = Bench(load_config(config, overrides))
    tr, dv, te = (np.asarray(rows) for rows in parts)  # the rows the heads use (readable images)
    n_values = {a: len(bench.schema.values(a)) for a in bench.schema.attributes}
    texts = bench.texts
    start = time.perf_counter()
    dev_scores, best = {}, None
    for c in grid:
        model = TextAttributeClassifier(C=c).fit(
            [texts[r] for r in tr],
            bench.category[tr],
            {a: v[tr] for a, v in bench.labels.items()},
            n_values,
            len(bench.categories),
        )
        dev_scores[c] = bench.score(dv, model.log_probs([texts[r] for r in dv], bench.category[dv])).score
        if best is None or dev_scores[c] > dev_scores[best[0]]:
            best = (c, model)
    seconds = time.perf_counter() - start
    c, model = best
    test_texts = [texts[r] for r in te]
    pred = bench.predict(te, model.log_probs(test_texts, bench.category[te]))
    full = bench.report(te, pred)
    half_texts = ["" if i in set(blank) else t for i, t in enumerate(test_texts)]
    half_pred = bench.predict(te, model.log_probs(half_texts, bench.category[te]))
    return {
        "C": c,
        "dev_score_by_C": dev_scores,
        "score": full.score,
        "per_attribute": per_attribute(full),
        "score_half_text": bench.report(te, half_pred).score,
        "seconds": seconds,
        "predictions": {"text_only": pred, "text_only_half_text": half_pred},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "fashion.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key=value")
    parser.add_argument("--predict-images", type=int, default=1000)
    parser.add_argument("--fusions", default="concat,gated", help="Fusions to train; dev picks one.")
    parser.add_argument("--probe-c", default=",".join(f"{c:g}" for c in PROBE_C), help="C grid of the probe.")
    parser.add_argument("--rounds", type=int, default=2, help="Throughput rounds (best of).")
    parser.add_argument("--members", type=int, default=4, help="heads.members of the reported listing heads.")
    parser.add_argument(
        "--class-balance",
        default="dev",
        type=lambda v: v if v == "dev" else float(v),
        help="train.class_balance of the reported listing heads: dev or a strength.",
    )
    parser.add_argument(
        "--resamples",
        type=int,
        default=RESAMPLES,
        help="Bootstrap resamples of the test rows for the scores' and gaps' intervals.",
    )
    parser.add_argument(
        "--head",
        type=int,
        default=None,
        help="Only the catalog file's first N rows (a quicker, smaller run).",
    )
    args = parser.parse_args()
    if args.head is not None:
        args.overrides += head_rows(load_config(args.config, args.overrides), args.head)
    cfg = load_config(args.config, args.overrides)
    if not cfg.catalog.text_columns:
        raise SystemExit("the config names no catalog.text_columns")
    torch.manual_seed(0)
    bench = Bench(cfg)
    backbone, backbone_state = embedding_backbone(cfg)
    embedded = embed_catalog(bench.catalog, backbone, **embed_options(cfg.embed), progress=True)
    ok = embedded.ok
    tr, dv, te = (rows[ok[rows]] for rows in (bench.split.train, bench.split.dev, bench.split.test))
    blank = np.sort(np.random.default_rng(cfg.train.seed).permutation(len(te))[: len(te) // 2])
    with ProcessPoolExecutor(1) as pool:
        grid = [float(c) for c in args.probe_c.split(",")]
        parts = [tr.tolist(), dv.tolist(), te.tolist()]
        probe_job = pool.submit(probe, args.config, args.overrides, parts, blank.tolist(), grid)
        listing = (args.members, args.class_balance)
        heads = train_heads(
            bench, cfg, embedded.features, (tr, dv, te), blank, args.fusions.split(","), listing
        )
        text_only = probe_job.result()
    # After the probe's process is gone: it would share the CPU with the timed predictions.
    throughput = measure_throughput(
        bench, cfg, heads, backbone, backbone_state, te, args.predict_images, args.rounds
    )
    image_score, fused = heads["image"]["test"].score, heads["fused"]
    intervals = score_intervals(
        bench.truth(te),
        {**heads["predictions"], **text_only["predictions"]},
        bench.schema.categories,
        args.resamples,
    )
    out = {
        "dataset": "fashion-product-images (category = masterCategory, 4 categories with >= 500 rows), "
        "text column productDisplayName",
        "rows_used": f"first {args.head} rows of the catalog file" if args.head else "all",
        "arguments": {k: v for k, v in vars(args).items() if k != "config"},
        "split": {
            "function": "taxonomist.data.prepare.prepare_catalog(cfg).split (train/dev/test per "
            f"category, {cfg.train.dev_fraction}/{cfg.train.test_fraction}, identical images grouped)",
            "seed": cfg.train.seed,
            "rows": {"train": len(tr), "dev": len(dv), "test": len(te)},
            "image_errors": int((~ok).sum()),
        },
        "score_image_only": image_score,
        "score_text_only": text_only["score"],
        "score_fused": fused["test"].score,
        "score_text_only_half_text": text_only["score_half_text"],
        "score_fused_half_text": fused["half"].score,
        "score_fused_blank_text": fused["blank"].score,
        "score_fused_blank_text_trunk_only": fused["blank_trunk"].score,
        "score_fused_no_image": fused["no_image"].score,
        **intervals,
        "max_ece": max(fused["ece"].values()),
        "max_ece_half_text": max(fused["ece_half"].values()),
        "blank_text_delta": abs(fused["blank"].score - image_score),
        "fused_vs_image_throughput": throughput["fused"] / throughput["image"],
        "predict_images_per_s": throughput,
        "fusion": fused["fusion"],
        "members": fused["cfg"].heads.members,
        "class_balance": fused["calibration"].strengths,
        "class_balance_by_inputs": fused["calibration"].strengths_by_inputs,
        "class_balance_image_only": heads["image"]["calibration"].strengths,
        "score_fused_one_seed": heads["test_by_fusion"][fused["fusion"]],
        "score_fused_members_without_class_balance": fused["members_plain"].score,
        "dev_score_fused": fused["dev"].score,
        "fusion_dev_scores": heads["dev_by_fusion"],
        "fusion_test_scores": heads["test_by_fusion"],
        "text_settings": {k: v for k, v in vars(cfg.text).items()},
        "per_attribute": {
            "image_only": per_attribute(heads["image"]["test"]),
            "text_only": text_only["per_attribute"],
            "fused": per_attribute(fused["test"]),
            "fused_half_text": per_attribute(fused["half"]),
            "fused_blank_text": per_attribute(fused["blank"]),
        },
        "ece_per_attribute": fused["ece"],
        "ece_per_attribute_half_text": fused["ece_half"],
        "text_only_probe": {k: text_only[k] for k in ("C", "dev_score_by_C", "seconds")},
        "train_seconds": {
            "image_only": heads["image"]["seconds"],
            **{f"fused_{k}": v for k, v in heads["seconds_by_fusion"].items()},
            "fused_reported_with_image_fallback": fused["seconds"],
            "text_features": heads["text_seconds"],
            "text_only_probe_with_C_search": text_only["seconds"],
        },
        "predict_images": throughput["n"],
        "machine": machine(),
        "tried": TRIED,
    }
    out["targets_met"] = targets(out)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1, default=float))
    write_docs(out)
    print(json.dumps({k: v for k, v in out.items() if not isinstance(v, dict)}, indent=1, default=float))


# The done-when gaps, each a paired difference of two test-row predictions: (minuend, subtrahend).
GAPS = {
    "fused - text_only": ("fused", "text_only"),
    "fused - image_only": ("fused", "image_only"),
    "fused_half - text_only_half": ("fused_half_text", "text_only_half_text"),
    "fused_half - image_only": ("fused_half_text", "image_only"),
    "fused_blank - image_only": ("fused_blank_text", "image_only"),
}


def score_intervals(truth: pd.DataFrame, predictions: dict, categories, resamples: int) -> dict:
    """Every test score's bootstrap interval (rows resampled within each category, BCa) and each target
    gap's paired interval: whether a figure's distance from its target is more than the test rows' own
    sampling noise."""
    boot = bootstrap_scores(truth, predictions, categories, resamples=resamples)
    return {
        "score_intervals": {name: boot.interval(name).to_dict() for name in predictions},
        "gap_intervals": {gap: boot.difference(*pair).to_dict() for gap, pair in GAPS.items()},
        "interval_method": f"bootstrap of the {len(truth)} test rows, resampled within each category, "
        f"{resamples} resamples, BCa, {boot.level:.0%}; gaps paired (the same resamples)",
    }


def head_rows(cfg: RunConfig, n: int) -> list[str]:
    """Overrides that point the catalog at a copy of its file's first ``n`` rows (images stay put)."""
    source = expand_path(cfg.catalog.path)
    path = Path(tempfile.mkdtemp(prefix="taxonomist-mm-head-")) / source.name
    read_table(source).head(n).to_csv(path, index=False)
    root = expand_path(cfg.catalog.image_root) if cfg.catalog.image_root else source.parent
    return [f"catalog.path={path}", f"catalog.image_root={root}"]


def targets(r: dict) -> dict[str, bool]:
    """Issue 18's done-when figures."""
    return {
        "score_fused >= 0.87": r["score_fused"] >= 0.87,
        "fused - text_only >= 0.01": r["score_fused"] - r["score_text_only"] >= 0.01,
        "fused - image_only >= 0.15": r["score_fused"] - r["score_image_only"] >= 0.15,
        "fused_half - max(image_only, text_only_half) >= 0.05": r["score_fused_half_text"]
        - max(r["score_image_only"], r["score_text_only_half_text"])
        >= 0.05,
        "max_ece <= 0.02": r["max_ece"] <= 0.02,
        "blank_text_delta <= 0.01": r["blank_text_delta"] <= 0.01,
        "fused_vs_image_throughput >= 0.8": r["fused_vs_image_throughput"] >= 0.8,
    }


def train_heads(
    bench: Bench,
    cfg: RunConfig,
    features: np.ndarray,
    parts,
    blank: np.ndarray,
    fusions: list[str],
    listing: tuple[int, float | str],
) -> dict:
    """Image-only heads and the listing heads (both fusions, one seed each; the dev pick then trained
    as the recipe trains it with ``listing``'s heads.members and train.class_balance), all chosen by
    dev score."""
    tr, dv, te = parts

    def feature_set(rows: np.ndarray) -> FeatureSet:
        return FeatureSet.build(
            features[rows], bench.category[rows], {a: v[rows] for a, v in bench.labels.items()}
        )

    def fit(
        run_cfg: RunConfig, data: tuple[FeatureSet, FeatureSet], text, fallback=None
    ) -> tuple[object, float, float]:
        torch.manual_seed(run_cfg.train.seed)
        model = build_heads(run_cfg, features.shape[1], bench.masks, text)
        if text is not None and run_cfg.text.image_fallback:  # as the recipe does: the image-only heads
            model.set_image_fallback(fallback)
        history = fit_heads(
            model,
            data[0],
            data[1],
            lambda z: bench.score(dv, z).score,
            run_cfg.train,
            progress=False,
            text_dropout=run_cfg.text.text_dropout,
            image_dropout=run_cfg.text.image_dropout,
        )
        return model, history.best_score, history.seconds

    image_model, _, image_seconds = fit(cfg, (feature_set(tr), feature_set(dv)), None)
    # Decided as the recipe decides with the listing heads' train.class_balance: rows without a title
    # go to these very heads, so a blank title must score as the image-only model does.
    image_cfg = copy.deepcopy(cfg)
    image_cfg.train.class_balance = listing[1]
    image_fit = fit_calibration(
        image_cfg, image_model, feature_set(tr), feature_set(dv), lambda z: bench.score(dv, z).score
    )
    image_pred = bench.predict(te, predict_decisions(image_model, feature_set(te), image_fit))
    out = {
        "image": {
            "model": image_model,
            "seconds": image_seconds,
            "calibration": image_fit,
            "test": bench.report(te, image_pred),
        },
        "predictions": {"image_only": image_pred},
    }
    print(f"image-only test {out['image']['test'].score:.4f}", flush=True)

    fused_cfg = copy.deepcopy(cfg)
    fused_cfg.heads.inputs = ["image", "text"]
    start = time.perf_counter()
    text = listing_text(fused_cfg, bench.schema)
    train_texts = [bench.texts[r] for r in tr]
    text.lexical.fit(train_texts)
    probed = text.probe.fit_transform(
        train_texts, bench.category[tr], {a: v[tr] for a, v in bench.labels.items()}, seed=cfg.train.seed
    )
    all_text = text.features(bench.texts, bench.category)
    all_text.dense[tr, text.probe_offset :] = probed  # training rows: their cross-fitted probe features
    text_seconds = time.perf_counter() - start

    def listing_set(rows: np.ndarray, blank_rows: np.ndarray | None = None) -> FeatureSet:
        data = feature_set(rows)
        dense, lexical, present = all_text.dense[rows], all_text.lexical[rows], all_text.present[rows].copy()
        if blank_rows is not None:  # those rows' titles removed: the same features a blank title gives
            keep = np.ones(len(rows), dtype=bool)
            keep[blank_rows] = False
            dense = dense * keep[:, None]
            lexical = lexical.multiply(keep[:, None].astype(np.float32)).tocsr()
            present &= keep
        set_text(data, TextFeatures(dense, lexical, present))
        return data

    train_set, dev_set, test_set = listing_set(tr), listing_set(dv), listing_set(te)
    candidates, dev_by_fusion, test_by_fusion, seconds_by_fusion = {}, {}, {}, {}
    for fusion in fusions:
        run_cfg = copy.deepcopy(fused_cfg)
        run_cfg.text.fusion = fusion
        model, dev_score, seconds = fit(run_cfg, (train_set, dev_set), text, image_model)
        candidates[fusion] = model
        dev_by_fusion[fusion], seconds_by_fusion[fusion] = dev_score, seconds
        test_by_fusion[fusion] = bench.score(te, predict_logits(model, test_set)).score
        print(f"fused {fusion}: dev {dev_score:.4f} test {test_by_fusion[fusion]:.4f}", flush=True)
    fusion = max(dev_by_fusion, key=dev_by_fusion.get)
    fused_cfg.text.fusion = fusion
    fused_cfg.heads.members, fused_cfg.train.class_balance = listing

    def dev_score(z: dict, rows: np.ndarray | None = None) -> float:
        """The recipe's dev score (``DevScore``): of every dev row, or of the positions ``rows`` alone."""
        if rows is None:
            return bench.score(dv, z).score
        return bench.score(dv[rows], {a: v[torch.as_tensor(rows)] for a, v in z.items()}).score

    # The recipe's own training: the image fallback (the same heads as image_model above), then members.
    start = time.perf_counter()
    model, _ = fit_recipe_heads(fused_cfg, (train_set, dev_set), bench.masks, text, dev_score, False)
    reported_seconds = time.perf_counter() - start
    # Calibrated as the recipe calibrates (temperatures on dev, per set of inputs); the prior correction
    # then chooses each row's value from those probabilities.
    fitted = fit_calibration(fused_cfg, model, train_set, dev_set, dev_score)

    def decide(data: FeatureSet, hide: str | None = None, correction: dict | None = None) -> tuple:
        """Each row's calibrated probabilities and decision scores, as the listing checkpoint gives them
        (``correction``: this one for every row instead)."""
        probs = predict_probs(model, data, fitted.temperatures, fitted.temperatures_by_inputs, hide=hide)
        if correction is not None:
            return probs, decision_scores(probs, correction)
        present = hidden_present(data.present, hide)
        return probs, decision_scores(
            probs, fitted.adjustment, by_inputs=fitted.adjustment_by_inputs, present=present
        )

    def scored(rows: np.ndarray, data: FeatureSet, hide: str | None = None, correction: dict | None = None):
        return bench.score(rows, decide(data, hide, correction)[1])

    half_set = listing_set(te, blank)
    views = {  # the test predictions whose scores get bootstrap intervals
        "fused": (test_set, None),
        "fused_half_text": (half_set, None),
        "fused_blank_text": (test_set, "text"),
        "fused_no_image": (test_set, "image"),
    }
    out["predictions"].update(
        {name: bench.predict(te, decide(data, hide)[1]) for name, (data, hide) in views.items()}
    )
    reports = {name: bench.report(te, out["predictions"][name]) for name in views}
    out["fused"] = {
        "model": model,
        "cfg": fused_cfg,
        "text": text,
        "fusion": fusion,
        "calibration": fitted,
        "dev": scored(dv, dev_set),
        "members_plain": scored(te, test_set, correction={}),
        "test": reports["fused"],
        "half": reports["fused_half_text"],
        "blank": reports["fused_blank_text"],
        "blank_trunk": trunk_blank_score(model, lambda: scored(te, test_set, "text")),
        "no_image": reports["fused_no_image"],
        "ece": test_ece(test_set.labels, *decide(test_set)),
        "ece_half": test_ece(half_set.labels, *decide(half_set)),
        "seconds": reported_seconds,
    }
    print(
        f"fused, {fused_cfg.heads.members} seeds, class balance {fitted.strengths}: "
        f"test {out['fused']['test'].score:.4f}",
        flush=True,
    )
    out.update(
        dev_by_fusion=dev_by_fusion,
        test_by_fusion=test_by_fusion,
        seconds_by_fusion=seconds_by_fusion,
        text_seconds=text_seconds,
    )
    return out


def trunk_blank_score(model, score) -> object:
    """Every title blank, scored by the fused trunk itself (its image fallback set aside): what modality
    dropout alone gives rows without text. ``score()`` scores the model with every title hidden."""
    members = getattr(model, "members", [model])
    fallbacks = [m.image_only for m in members]
    for m in members:
        m.image_only = None
    try:
        return score()
    finally:
        for m, fallback in zip(members, fallbacks, strict=True):
            m.image_only = fallback


def test_ece(labels: dict, probs: dict, scores: dict) -> dict[str, float]:
    """ECE per attribute on test rows: the probability of the value each row gets (the argmax of its
    decision ``scores``), as the predictor reports it."""
    out = {}
    for attribute, choice in scores.items():
        y = labels[attribute].numpy()
        chosen = choice.argmax(1).numpy()
        confidence = probs[attribute].numpy()[np.arange(len(chosen)), chosen]
        known = y != MISSING
        if known.sum():
            out[attribute] = expected_calibration_error(confidence[known], (chosen == y)[known])
    return out


def measure_throughput(bench, cfg, heads, backbone, backbone_state, rows, n_images, rounds) -> dict:
    """Cold-cache batch predict of the same test images with the image-only and the listing checkpoint,
    alternated ``rounds`` times (best of each: the machine is shared)."""
    work = Path(tempfile.mkdtemp(prefix="taxonomist-mm-"))
    fused = heads["fused"]
    feature_dim = heads["image"]["model"].feature_mean.shape[0]
    for name, model, extra in (
        ("image", heads["image"]["model"], {}),
        (
            "fused",
            fused["model"],
            {"text": text_record(fused["cfg"], fused["text"])},
        ),
    ):
        run_cfg = fused["cfg"] if name == "fused" else cfg
        fitted = heads[name]["calibration"].checkpoint_fields()
        checkpoint = heads_checkpoint(
            run_cfg, backbone, bench.schema, bench.categories, feature_dim, **fitted, **extra
        )
        checkpoint.save(work / name, model, backbone_state)
        if name == "fused":
            fused["text"].lexical.save(work / name)
            fused["text"].probe.save(work / name)
    subset = bench.catalog.subset(rows[:n_images])
    best = {"image": 0.0, "fused": 0.0}
    for _ in range(rounds):
        for name in best:
            predictor = Predictor.from_pretrained(work / name)
            summary = predictor.predict_catalog(
                subset, work / f"out-{name}", **embed_options(cfg.embed), progress=False
            )
            best[name] = max(best[name], summary.images_per_s)
            for p in (work / f"out-{name}").glob("*"):
                if p.is_file():
                    p.unlink()
                else:
                    shutil.rmtree(p)
    return {**best, "n": len(subset)}


def write_docs(r: dict) -> None:
    order = list(r["per_attribute"]["fused"])
    t = r["targets_met"]
    half_gain = r["score_fused_half_text"] - max(r["score_image_only"], r["score_text_only_half_text"])
    half_gap = (
        "fused_half - image_only"
        if r["score_image_only"] >= r["score_text_only_half_text"]
        else "fused_half - text_only_half"
    )
    level = f"{r['score_intervals']['fused']['level']:.0%}"

    def score_span(name: str) -> str:
        return Interval(**r["score_intervals"][name]).span()

    def gap_span(name: str) -> str:
        return Interval(**r["gap_intervals"][name]).span(signed=True)

    section = [
        HEADING,
        "",
        f"`python benchmarks/multimodal.py` on {r['machine']}; results in "
        "`benchmarks/results/multimodal-fpi.json`. Split: `split_train_dev_test` per category (10% dev, "
        f"10% test, seed {r['split']['seed']}): {r['split']['rows']['train']} train / "
        f"{r['split']['rows']['dev']} dev / {r['split']['rows']['test']} test rows with a readable image. "
        "Every model is fitted on train, chooses on dev (epoch, C, fusion), and is scored on test. "
        f"Rows: {r['rows_used']}.",
        "",
        *score_table_head(order),
        score_row("image-only heads", r["score_image_only"], r["per_attribute"]["image_only"], order),
        score_row(
            f"text-only probe (TF-IDF word 1–2 + char 2–5 ⊕ category, LR, C={r['text_only_probe']['C']:g})",
            r["score_text_only"],
            r["per_attribute"]["text_only"],
            order,
        ),
        score_row(
            f"listing heads ({r['fusion']} fusion, {r['members']} seed{'s' if r['members'] > 1 else ''}, "
            f"class balance {r['arguments']['class_balance']})",
            r["score_fused"],
            r["per_attribute"]["fused"],
            order,
        ),
        score_row(
            "listing heads, half the titles blank",
            r["score_fused_half_text"],
            r["per_attribute"]["fused_half_text"],
            order,
        ),
        score_row(
            "listing heads, every title blank",
            r["score_fused_blank_text"],
            r["per_attribute"]["fused_blank_text"],
            order,
        ),
        "",
        f"| measure | value | {level} interval | target | met |",
        "| --- | ---: | ---: | ---: | :---: |",
        f"| score_fused | {r['score_fused']:.4f} | {score_span('fused')} | ≥ 0.87 | "
        f"{_yes(t['score_fused >= 0.87'])} |",
        f"| score_fused − score_text_only | {r['score_fused'] - r['score_text_only']:+.4f} | "
        f"{gap_span('fused - text_only')} | ≥ 0.01 | {_yes(t['fused - text_only >= 0.01'])} |",
        f"| score_fused − score_image_only | {r['score_fused'] - r['score_image_only']:+.4f} | "
        f"{gap_span('fused - image_only')} | ≥ 0.15 | {_yes(t['fused - image_only >= 0.15'])} |",
        f"| score_fused_half_text − max(image_only, text_only_half_text "
        f"{r['score_text_only_half_text']:.4f}) | {half_gain:+.4f} | "
        f"{gap_span(half_gap)} | ≥ 0.05 | "
        f"{_yes(t['fused_half - max(image_only, text_only_half) >= 0.05'])} |",
        f"| max_ece (fused, test, temperature per attribute fitted on dev) | {r['max_ece']:.4f} | | ≤ 0.02 | "
        f"{_yes(t['max_ece <= 0.02'])} |",
        f"| blank_text_delta | {r['blank_text_delta']:.4f} | | ≤ 0.01 | "
        f"{_yes(t['blank_text_delta <= 0.01'])} |",
        f"| fused_vs_image_throughput ({r['predict_images_per_s']['fused']:.1f} vs "
        f"{r['predict_images_per_s']['image']:.1f} img/s, {r['predict_images']} images, cold) | "
        f"{r['fused_vs_image_throughput']:.2f} | | ≥ 0.8 | {_yes(t['fused_vs_image_throughput >= 0.8'])} |",
        f"| fused, every title blank, the trunk alone (fallback set aside) | "
        f"{r['score_fused_blank_text_trunk_only']:.4f} | | | |",
        f"| fused, every image missing (text only) | {r['score_fused_no_image']:.4f} | "
        f"{score_span('fused_no_image')} | | |",
        f"| max ECE with half the titles blank (per-input temperature) | {r['max_ece_half_text']:.4f} "
        "| | | |",
        "",
        f"Intervals: {r['interval_method']}. A target inside a score's interval is within the test rows' "
        "sampling noise of it, either side; the maintainers' held-out rows are another draw.",
        "",
        reported_setup(r),
        "Rows without a title are scored by the image-only heads the listing checkpoint carries "
        "(`text.image_fallback`, on by default: the image recipe's heads, trained on the same rows) and "
        "decided with the strengths chosen on dev for rows without a title, the same the image-only heads "
        "choose, so `blank_text_delta` is 0; the row above shows what the fused trunk alone, trained with "
        "modality dropout, gives those rows. "
        "Fusion chosen on dev (one seed each, no correction): "
        + ", ".join(
            f"{k} {v:.4f} (test {r['fusion_test_scores'][k]:.4f})" for k, v in r["fusion_dev_scores"].items()
        )
        + ". Training seconds: "
        + ", ".join(f"{k} {v:.0f}" for k, v in r["train_seconds"].items())
        + ".",
        "",
    ]
    section += [
        "Also tried (dev scores chosen on, test seen):",
        "",
        *[f"- {t}" for t in r.get("tried", TRIED)],
        "",
    ]
    replace_section(DOCS, HEADING, "\n".join(section))


def reported_setup(r: dict) -> str:
    """What the reported listing heads are: seeds and the prior-correction strengths dev chose."""

    def strengths(chosen: dict) -> str:
        return ", ".join(f"{a} {v:g}" for a, v in chosen.items())

    by_inputs = "; ".join(
        f"rows with the {inputs} alone: {strengths(chosen)}"
        for inputs, chosen in r.get("class_balance_by_inputs", {}).items()
    )
    return (
        f"The reported listing heads: {r['members']} seed(s) (`heads.members`; one seed: test "
        f"{r['score_fused_one_seed']:.4f}), prior-correction strengths (`train.class_balance: "
        f"{r['arguments']['class_balance']}`) for titled rows {strengths(r['class_balance'])}"
        + (f"; {by_inputs}" if by_inputs else "")
        + f" (without any: test {r['score_fused_members_without_class_balance']:.4f}); the image-only "
        f"heads with the same setting chose {strengths(r.get('class_balance_image_only', {}))}. Dev "
        f"{r['dev_score_fused']:.4f}. "
    )


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
