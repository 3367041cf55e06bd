"""Kubernetes target: `helm upgrade` of the helm/catsdogs chart with the version's image tag.

    helm upgrade --install RELEASE CHART --namespace NS --reset-then-reuse-values
         --set image.repository=REPO --set image.tag=TAG --wait --atomic --timeout 10m

`--reset-then-reuse-values` (Helm 3.14 and later) keeps the values the release was installed or
upgraded with and takes the chart's defaults for every key they do not set: a chart that gained
a value (e.g. `pictures`) rolls out with its default, where `--reuse-values` would keep the old
values only.

The chart's Deployment rolls out with maxUnavailable 0 and maxSurge 1: a new pod must pass its
readiness probe (/readyz) before the Service sends it traffic and an old pod is terminated;
`--atomic` rolls the release back when the new pods never get ready. The image is the runtime
image plus the version's model layer (catsdogs.deployment.images), pushed to REPO as TAG by the
image step (`CATSDOGS_KUBE_IMAGE_TAG`, default `v{version}`).

Runs only when a kube context is configured (`kubectl config current-context` answers, or
$KUBECONFIG names a file); otherwise the deploy says it was skipped. Settings: CATSDOGS_KUBE_*
(RELEASE, NAMESPACE, CHART, IMAGE_REPOSITORY, IMAGE_TAG, ENDPOINT, TIMEOUT), CATSDOGS_HELM,
CATSDOGS_KUBECTL.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from catsdogs.config import Params
from catsdogs.deployment.release import Release, Skipped, http_status
from catsdogs.deployment.service_entry import project_dir
from catsdogs.errors import UserError
from catsdogs.settings import KubernetesTargetSettings, load

log = logging.getLogger(__name__)

# The chart, in the project's checkout (`service_entry.project_dir`) unless $CATSDOGS_KUBE_CHART.
CHART = Path("helm") / "catsdogs"


def helm_upgrade_command(helm: str, release: str, chart: str, namespace: str,
                         repository: str, tag: str, timeout: str = "10m") -> list[str]:
    """The exact `helm upgrade` argv a rollout runs (tests render the same values offline)."""
    return [helm, "upgrade", "--install", release, chart, "--namespace", namespace,
            "--reset-then-reuse-values", "--set", f"image.repository={repository}",
            "--set", f"image.tag={tag}", "--wait", "--atomic", "--timeout", timeout]


@dataclass
class KubernetesTarget:
    release: str = "catsdogs"
    namespace: str = "catsdogs"
    chart: str = ""   # empty: the checkout's CHART (resolved when deploying)
    repository: str = "registry.example.com/catsdogs"
    tag_template: str = "v{version}"
    service_url: str = ""
    helm: str = "helm"
    kubectl: str = "kubectl"
    timeout: str = "10m"
    name: str = "kubernetes"

    @classmethod
    def from_env(cls, params: Params) -> KubernetesTarget:
        """The target from `KubernetesTargetSettings` (`CATSDOGS_K8S_RELEASE*`, docs/rollout.md);
        SettingsError for bad values."""
        settings = load(KubernetesTargetSettings)
        return cls(release=settings.k8s_release, namespace=settings.k8s_release_namespace,
                   chart=settings.k8s_release_chart, repository=settings.k8s_release_image,
                   tag_template=settings.k8s_release_tag,
                   service_url=settings.k8s_release_endpoint, helm=settings.helm,
                   kubectl=settings.kubectl, timeout=f"{int(params.deploy.ready_timeout_s)}s")

    def context(self) -> str | None:
        """The configured kube context, or None (no kubectl, no config)."""
        kubectl = shutil.which(self.kubectl)
        config = os.environ.get("KUBECONFIG", "")
        if kubectl is None:
            return "KUBECONFIG" if config and Path(config.split(os.pathsep)[0]).is_file() else None
        done = subprocess.run([kubectl, "config", "current-context"], capture_output=True,
                              text=True, check=False, timeout=30)
        return done.stdout.strip() or None if done.returncode == 0 else None

    def endpoint(self) -> str:
        return self.service_url

    def serving(self) -> str | None:
        """The image tag's version the release runs now (from `helm get values`), else None."""
        helm = shutil.which(self.helm)
        if helm is None or self.context() is None:
            return None
        done = subprocess.run([helm, "get", "values", self.release, "-n", self.namespace,
                               "--all", "-o", "json"], capture_output=True, text=True,
                              check=False, timeout=60)
        if done.returncode != 0:
            return None
        import json

        tag = str(((json.loads(done.stdout) or {}).get("image") or {}).get("tag") or "")
        prefix, _, suffix = self.tag_template.partition("{version}")
        if not (tag.startswith(prefix) and tag.endswith(suffix)):
            return None
        version = tag[len(prefix):len(tag) - len(suffix)] if suffix else tag[len(prefix):]
        if self.service_url and http_status(self.service_url + "/readyz") != 200:
            return None
        return version or None

    def preflight(self) -> tuple[str, str]:
        """(kube context, helm binary); Skipped without either, UserError without the endpoint
        the post-deploy check calls."""
        context = self.context()
        if context is None:
            raise Skipped("no kube context is configured (kubectl config current-context, "
                          "KUBECONFIG): the Kubernetes rollout was not run")
        helm = shutil.which(self.helm)
        if helm is None:
            raise Skipped(f"{self.helm} is not installed here: the Kubernetes rollout was not run")
        if not self.service_url:
            raise UserError("CATSDOGS_K8S_RELEASE_ENDPOINT is not set: the post-deploy check needs the "
                            "Service's URL as this task reaches it")
        return context, helm

    def deploy(self, release: Release) -> dict[str, Any]:
        context, helm = self.preflight()
        tag = self.tag_template.format(version=release.version)
        chart = self.chart or str(project_dir() / CHART)
        argv = helm_upgrade_command(helm, self.release, chart, self.namespace,
                                    self.repository, tag, self.timeout)
        started = time.monotonic()
        log.info("kubernetes (%s): %s", context, " ".join(argv))
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise UserError(f"helm upgrade failed (the release was rolled back by --atomic): "
                            f"{done.stderr.strip()[-1500:]}")
        return {"context": context, "image": f"{self.repository}:{tag}",
                "helm_release": self.release, "switch_s": round(time.monotonic() - started, 1)}
