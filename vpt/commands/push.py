"""``vpt push RUN_OR_ARTIFACT ORG/NAME``: share a task on the Hugging Face Hub.

A run folder pushes its best/ artifact plus results.json; an artifact folder pushes itself (best/ inside a
run: with the run's results.json). The upload holds adapter_config.json, adapter_model.safetensors, the
results and a README.md model card (library vpt, base model, tags, classes, val / test metrics, the
training command, the vpt version). The artifact is checked as `vpt inspect` checks it before anything is
sent. Log in first (`hf auth login`, or HF_TOKEN); needs `pip install 'vpt[hub]'`.

Load it anywhere with `vpt predict hf://ORG/NAME IMG`, `vpt eval hf://ORG/NAME --data DIR`,
`vpt inspect hf://ORG/NAME` or `vpt.from_pretrained("ORG/NAME")`.

exit status:
  0  pushed (the commit is printed, as hf://ORG/NAME@COMMIT)
  2  nothing pushed: no such folder, an artifact that is refused, no token, a repo the token can't write,
     or huggingface_hub missing (the message says what to do)"""
from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("push", help="share a task on the Hugging Face Hub", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", metavar="RUN_OR_ARTIFACT", help="run folder (runs/NAME) or artifact folder")
    p.add_argument("repo_id", metavar="ORG/NAME", help="the hub repo (created if missing)")
    p.add_argument("--private", action="store_true", default=None, help="create the repo private")
    p.add_argument("--revision", metavar="BRANCH", help="push to this branch (created if missing; default main)")
    p.add_argument("-m", "--message", metavar="TEXT", help="commit message")
    p.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..hub_push import push_to_hub
    res = push_to_hub(args.source, args.repo_id, private=args.private, revision=args.revision,
                      commit_message=args.message, create_pr=args.create_pr)
    print(f"pushed {args.source} to {res.url}")
    print(f"load it with: vpt predict {res.uri} IMAGE_OR_DIR   (or hf://{args.repo_id} for the latest)")
    return 0
