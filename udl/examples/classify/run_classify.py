#!/usr/bin/env python3
"""Runs the classify example on an embedded local cluster and checks its answers.

1. starts ``squall.local_cluster(nodes)``;
2. creates the pool ``/images`` (volatile) with ``gpu_cache = {device = 0, capacity =
   "1GiB"}``: on a machine with a GPU every replica keeps the images in GPU memory and
   the UDL gets a CUDA view; without one the cache is the host buffer itself;
3. uploads ``classify.py`` (entry ``Classify``) and adds ``dfgs.json`` (``/images`` ->
   ``Classify`` -> ``/cache/classified``), with ``--backend`` in the UDL's configuration;
4. puts ``--images`` generated 32x32 RGB images under ``/images/``, waits for each
   result through a watch, and compares the classes with the numpy implementation run
   here (exact for the numpy backend; torch may differ on near ties).

Usage::

    target/pyenv/bin/python udl/examples/classify/run_classify.py \\
        [--nodes 3] [--images 8] [--backend auto|torch|numpy] [--no-gpu-cache]

Exit status 0 when every image got the expected class.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

import squall

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import classify  # noqa: E402  (the example's module, beside this script)

POOL = "/images"
RESULTS = "/cache/classified"
GPU_CACHE = {"device": 0, "capacity": "1GiB"}
RESULT_TIMEOUT_S = 60.0


def create_images_pool(cluster: squall.Client, gpu_cache: bool) -> str:
    """Creates ``/images``; returns how it is cached."""
    if not gpu_cache:
        cluster.create_pool(POOL, "volatile")
        return "no gpu_cache (--no-gpu-cache)"
    try:
        cluster.create_pool(POOL, "volatile", gpu_cache=GPU_CACHE)
    except TypeError:  # a squall package from before the option
        cluster.create_pool(POOL, "volatile")
        return "no gpu_cache: this squall package's create_pool has no gpu_cache option"
    cached = cluster.find_pool(f"{POOL}/x").gpu_cache
    if cached is None:
        return "no gpu_cache: the cluster created the pool without it (not supported by this node build)"
    return f"gpu_cache on device {cached['device']}, {cached['capacity_bytes'] >> 20} MiB"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--backend", choices=("auto", "torch", "numpy"), default="auto")
    ap.add_argument("--no-gpu-cache", action="store_true", help="create /images without gpu_cache")
    args = ap.parse_args(argv)

    with open(os.path.join(HERE, "dfgs.json")) as f:
        dfgs = json.load(f)
    vertex = dfgs[0]["graph"][0]
    config = dict(vertex["user_defined_logic_config_list"][0], backend=args.backend)
    vertex["user_defined_logic_config_list"] = [config]
    weights = classify.make_weights(config["seed"], config["classes"])
    images = classify.make_images(args.images)
    expected = [classify.classify_numpy(weights, img) for img in images]
    probabilities = [classify.softmax(classify.forward_numpy(weights, img).astype(np.float64)) for img in images]

    with squall.local_cluster(nodes=args.nodes) as cluster:
        print(f"local cluster of {args.nodes} node(s); dashboard {cluster.dashboard_url}")
        print(f"{POOL}: {create_images_pool(cluster, not args.no_gpu_cache)}")
        udl = cluster.upload_python_udl(os.path.join(HERE, "classify.py"), "Classify")
        if udl != vertex["user_defined_logic_list"][0]:
            raise SystemExit(f"dfgs.json names {vertex['user_defined_logic_list'][0]}, the upload is {udl}")
        cluster.add_dfgs(dfgs)
        print(f"UDL {udl} on {vertex['pathname']} -> {RESULTS}, config {config}")
        with cluster.watch(RESULTS) as watch:
            results = {}
            for i, img in enumerate(images):
                t0 = time.perf_counter()
                cluster.put(f"{POOL}/img{i}", img)
                key = f"{RESULTS}/img{i}"
                while key not in results:
                    event = watch.next(timeout_s=RESULT_TIMEOUT_S)
                    if event is None:
                        raise SystemExit(f"no result for {key} in {RESULT_TIMEOUT_S} s")
                    if not event.removed:
                        results[event.key] = (json.loads(bytes(event.value)), time.perf_counter() - t0)
        good = 0
        print(f"{'image':<6} {'class':>5} {'score':>7} {'expected':>8} {'backend':<7} {'device':<7} {'input':<7} {'ms':>7}")
        for i, (want, _score) in enumerate(expected):
            got, seconds = results[f"{RESULTS}/img{i}"]
            # torch computes in another order: a near tie may go the other way.
            tie = got["backend"] != "numpy" and abs(probabilities[i][got["class"]] - probabilities[i][want]) < 1e-4
            ok = got["class"] == want or tie
            good += ok
            print(
                f"img{i:<3} {got['class']:>5} {got['score']:>7.4f} {want:>8} {got['backend']:<7} "
                f"{got['device']:<7} {got['input_device']:<7} {seconds * 1e3:>7.1f}{'' if ok else '  MISMATCH'}"
            )
        print(f"{good}/{len(images)} as expected")
        cluster.remove_dfg(dfgs[0]["id"])
    return 0 if good == len(images) else 1


if __name__ == "__main__":
    sys.exit(main())
