"""Privacy audit of what the federated and distributed pipelines share: DLG and
iDLG on gradients, inversion of FedGKT's features, PSNR/SSIM, and defenses.
Importable without Flask or Celery."""
from __future__ import annotations

from automl_server.engine.privacy.defenses import Defense, gaussian, prune, top_k
from automl_server.engine.privacy.dlg import Rebuild, dlg_attack, with_sigmoid
from automl_server.engine.privacy.gradients import last_linear_weight_index, shared_gradient
from automl_server.engine.privacy.idlg import idlg_label, idlg_label_set
from automl_server.engine.privacy.inversion import invert_features
from automl_server.engine.privacy.metrics import psnr, ssim, to_pixels
from automl_server.engine.privacy.settings import AUDITED_BY_DEFAULT, PrivacyAuditSettings, audit_applies

__all__ = ["AUDITED_BY_DEFAULT", "Defense", "PrivacyAuditSettings", "Rebuild", "audit_applies", "dlg_attack",
           "gaussian", "idlg_label", "idlg_label_set", "invert_features", "last_linear_weight_index", "prune",
           "psnr", "shared_gradient", "ssim", "to_pixels", "top_k", "with_sigmoid"]
