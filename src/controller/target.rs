//! Resolving where a binding's cloud calls go and whose keys sign them: the binding's own
//! Secret (`spec.credentialsSecretRef`) wins over the operator's default credentials; project and
//! region come from the spec, else the Secret, else the operator's defaults. A bind must also
//! pass the namespace's [tenancy](crate::controller::tenancy) policy; an unbind goes where the bind went
//! (`status.boundWith`).

use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};

use crate::api::v1alpha1::{BindApi, BoundWith, CONDITION_BOUND, Reason, VipBinding};
use crate::ecs::credentials::from_secret_data;
use crate::ecs::{CloudTarget, Credentials, MetadataCredentials, check_path_id, check_region};

use crate::controller::binding::decide::Verdict;
use crate::controller::tenancy::Tenancy;

/// Reads Secrets (the one Kubernetes read the resolver needs), so tests can fake it.
pub trait SecretReader: Send + Sync {
    fn get<'a>(&'a self, namespace: &'a str, name: &'a str) -> BoxFuture<'a, Result<Option<Secret>, kube::Error>>;
}

impl SecretReader for kube::Client {
    fn get<'a>(&'a self, namespace: &'a str, name: &'a str) -> BoxFuture<'a, Result<Option<Secret>, kube::Error>> {
        async move { Api::<Secret>::namespaced(self.clone(), namespace).get_opt(name).await }.boxed()
    }
}

/// The operator-wide credentials used when a binding names no Secret.
#[derive(Clone)]
pub enum DefaultCredentials {
    None,
    Static(Credentials),
    Secret { namespace: String, name: String },
    Metadata(Arc<MetadataCredentials>),
}

impl std::fmt::Debug for DefaultCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DefaultCredentials::None => f.write_str("none"),
            DefaultCredentials::Static(c) => write!(f, "static key {}", c.key_id()),
            DefaultCredentials::Secret { namespace, name } => write!(f, "Secret {namespace}/{name}"),
            DefaultCredentials::Metadata(_) => f.write_str("ECS metadata service"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct OperatorDefaults {
    pub credentials: DefaultCredentials,
    pub project_id: Option<String>,
    pub region: Option<String>,
    /// False when a fixed `--ecs-endpoint` serves every region.
    pub region_required: bool,
    /// The API for bindings whose spec names none (`--default-api`).
    pub api: BindApi,
}

/// A bind's target, and the record it leaves for the deletion.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub target: CloudTarget,
    pub bound_with: BoundWith,
}

/// `Bound=True`: only the operator writes it, and only after the cloud accepted a bind.
fn confirmed_bound(b: &VipBinding) -> bool {
    b.condition(CONDITION_BOUND).is_some_and(|c| c.status == "True")
}

pub struct TargetResolver {
    secrets: Arc<dyn SecretReader>,
    defaults: OperatorDefaults,
    tenancy: Arc<Tenancy>,
}

fn unavailable(message: String) -> Verdict {
    Verdict { reason: Reason::CredentialsUnavailable, message }
}

fn invalid(message: String) -> Verdict {
    Verdict { reason: Reason::Invalid, message }
}

struct FromSecret {
    credentials: Credentials,
    project_id: Option<String>,
    region: Option<String>,
}

impl TargetResolver {
    /// Without a tenancy policy: every namespace may use the default credentials, on any
    /// project (see [`TargetResolver::with_tenancy`]).
    pub fn new(secrets: Arc<dyn SecretReader>, defaults: OperatorDefaults) -> Self {
        Self { secrets, defaults, tenancy: Arc::default() }
    }

    pub fn with_tenancy(mut self, tenancy: Arc<Tenancy>) -> Self {
        self.tenancy = tenancy;
        self
    }

    pub fn tenancy(&self) -> &Arc<Tenancy> {
        &self.tenancy
    }

    pub fn defaults(&self) -> &OperatorDefaults {
        &self.defaults
    }

    async fn read_secret(&self, namespace: &str, name: &str) -> Result<FromSecret, Verdict> {
        let secret = match self.secrets.get(namespace, name).await {
            Ok(Some(s)) => s,
            Ok(None) => return Err(unavailable(format!("credentials Secret {namespace}/{name} not found"))),
            Err(kube::Error::Api(e)) if e.code == 403 => {
                return Err(unavailable(format!(
                    "the operator may not read credentials Secret {namespace}/{name} (forbidden: check its RBAC)"
                )));
            }
            Err(e) => return Err(unavailable(format!("cannot read credentials Secret {namespace}/{name}: {e}"))),
        };
        if secret.metadata.deletion_timestamp.is_some() {
            // Still readable while its finalizers hold it; use it (it is what the binding named).
            tracing::debug!(secret = %format!("{namespace}/{name}"), "using a credentials Secret that is being deleted");
        }
        let data = secret.data.unwrap_or_default();
        let parsed =
            from_secret_data(&data).map_err(|e| invalid(format!("credentials Secret {namespace}/{name}: {e}")))?;
        Ok(FromSecret { credentials: parsed.credentials, project_id: parsed.project_id, region: parsed.region })
    }

    /// Where a bind goes, or why it may not (`CredentialsUnavailable` when it may come later,
    /// `Invalid` when the configuration is wrong, `DefaultCredentialsNotAllowed` or
    /// `ProjectNotAllowed` when the namespace's policy refuses it). Nothing is sent before this.
    pub async fn resolve(&self, b: &VipBinding) -> Result<CloudTarget, Verdict> {
        self.resolve_bind(b).await.map(|r| r.target)
    }

    /// [`TargetResolver::resolve`], with the record a bind to it leaves for the deletion, taken
    /// from the same reading of the spec that chose the credentials.
    pub async fn resolve_bind(&self, b: &VipBinding) -> Result<Resolved, Verdict> {
        self.resolve_checked(b, true).await
    }

    /// Where an unbind goes when the binding carries no record yet, without the policy checks:
    /// for writing the record of a binding bound before records existed.
    pub async fn resolve_unchecked(&self, b: &VipBinding) -> Result<Resolved, Verdict> {
        self.resolve_checked(b, false).await
    }

    /// Where an unbind goes: where the bind went (`status.boundWith`), with the credentials
    /// it used, whatever the policy says now. Without that record: a binding the cloud
    /// confirmed bound (`Bound=True`, which only the operator writes) was bound before records
    /// existed and is resolved from its spec without the policy checks (a live one has its
    /// record written at first sight, see `reconcile::backfill_record`, so only one deleted
    /// before the upgraded operator first saw it gets here); any other is checked like a bind,
    /// so a finalizer added by hand cannot turn a refused binding into an unbind.
    pub async fn resolve_for_unbind(&self, b: &VipBinding) -> Result<CloudTarget, Verdict> {
        if let Some(w) = b.status.as_ref().and_then(|s| s.bound_with.as_ref()) {
            return self.recorded(b, w).await;
        }
        self.resolve_checked(b, !confirmed_bound(b)).await.map(|r| r.target)
    }

    /// Whether the policy applies to this binding's unbind (see
    /// [`TargetResolver::resolve_for_unbind`]).
    pub fn unbind_is_checked(b: &VipBinding) -> bool {
        b.status.as_ref().and_then(|s| s.bound_with.as_ref()).is_none() && !confirmed_bound(b)
    }

    async fn recorded(&self, b: &VipBinding, w: &BoundWith) -> Result<CloudTarget, Verdict> {
        let namespace = b.namespace().unwrap_or_default();
        let credentials = match &w.credentials_secret {
            Some(name) => self.read_secret(&namespace, name).await?.credentials,
            None => self.default_credentials().await?.0.credentials,
        };
        // Written by the operator, but status is still input: the same checks as a spec.
        check_path_id("status.boundWith.projectId", &w.project_id).map_err(|e| invalid(e.to_string()))?;
        if !w.region.is_empty() || self.defaults.region_required {
            check_region(&w.region).map_err(|e| invalid(format!("status.boundWith.region: {e}")))?;
        }
        Ok(CloudTarget { region: w.region.clone(), project_id: w.project_id.clone(), credentials })
    }

    /// The operator's default credentials, and how to name them in a message.
    async fn default_credentials(&self) -> Result<(FromSecret, String), Verdict> {
        Ok(match &self.defaults.credentials {
            DefaultCredentials::None => {
                return Err(unavailable(
                    "no credentials: set spec.credentialsSecretRef, or give the operator default credentials (--credentials-secret, HUAWEICLOUD_SDK_AK/SK, or --metadata-credentials)".into(),
                ));
            }
            DefaultCredentials::Static(c) => (
                FromSecret { credentials: c.clone(), project_id: None, region: None },
                "the operator's credentials".to_string(),
            ),
            DefaultCredentials::Secret { namespace, name } => {
                (self.read_secret(namespace, name).await?, format!("Secret {namespace}/{name}"))
            }
            DefaultCredentials::Metadata(m) => {
                let credentials = m.credentials().await.map_err(|e| unavailable(e.to_string()))?;
                (FromSecret { credentials, project_id: None, region: None }, "the ECS metadata service".to_string())
            }
        })
    }

    async fn resolve_checked(&self, b: &VipBinding, policy: bool) -> Result<Resolved, Verdict> {
        let namespace = b.namespace().unwrap_or_default();
        let (found, source) = match &b.spec.credentials_secret_ref {
            Some(r) => (self.read_secret(&namespace, &r.name).await?, format!("Secret {namespace}/{}", r.name)),
            None => {
                if policy {
                    // Before any read: a namespace that may not use them learns nothing of them.
                    self.tenancy.may_use_default_credentials(&namespace)?;
                }
                self.default_credentials().await?
            }
        };
        let project_id = b
            .spec
            .project_id
            .clone()
            .or(found.project_id)
            .or_else(|| self.defaults.project_id.clone())
            .ok_or_else(|| {
                invalid(format!(
                    "no project ID: set spec.projectId, the projectId key of {source}, or the operator's --project-id"
                ))
            })?;
        check_path_id("projectId", &project_id).map_err(|e| invalid(format!("{e} (from {source} or the spec)")))?;
        let region = b.spec.region.clone().or(found.region).or_else(|| self.defaults.region.clone());
        let region = match region {
            Some(r) => {
                check_region(&r).map_err(|e| invalid(e.to_string()))?;
                r
            }
            None if self.defaults.region_required => {
                return Err(invalid(format!(
                    "no region: set spec.region, the region key of {source}, or the operator's --region"
                )));
            }
            None => String::new(),
        };
        if policy {
            self.tenancy.may_target(&namespace, &project_id, &region)?;
        }
        let bound_with = BoundWith {
            project_id: project_id.clone(),
            region: region.clone(),
            credentials_secret: b.spec.credentials_secret_ref.as_ref().map(|r| r.name.clone()),
            // Absent means ECS, so ECS records read as they always have.
            api: Some(b.spec.api.unwrap_or(self.defaults.api)).filter(|api| *api == BindApi::Vpc),
            ..Default::default()
        };
        Ok(Resolved { target: CloudTarget { region, project_id, credentials: found.credentials }, bound_with })
    }

    /// Whether this is the operator's default credentials Secret (used by every binding that
    /// names none).
    pub fn is_default_secret(&self, namespace: &str, name: &str) -> bool {
        matches!(&self.defaults.credentials, DefaultCredentials::Secret { namespace: ns, name: n } if ns == namespace && n == name)
    }
}
