//! Resolving where a binding's cloud calls go and whose keys sign them: the binding's own
//! Secret (`spec.credentialsSecretRef`) wins over the operator's default credentials; project and
//! region come from the spec, else the Secret, else the operator's defaults.

use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};

use crate::api::v1alpha1::{Reason, VipBinding};
use crate::ecs::credentials::from_secret_data;
use crate::ecs::{CloudTarget, Credentials, MetadataCredentials, check_path_id, check_region};

use super::decide::Verdict;

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
}

pub struct TargetResolver {
    secrets: Arc<dyn SecretReader>,
    defaults: OperatorDefaults,
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
    pub fn new(secrets: Arc<dyn SecretReader>, defaults: OperatorDefaults) -> Self {
        Self { secrets, defaults }
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

    /// The binding's cloud target, or why there is none (`CredentialsUnavailable` when it may
    /// come later, `Invalid` when the configuration is wrong).
    pub async fn resolve(&self, b: &VipBinding) -> Result<CloudTarget, Verdict> {
        let namespace = b.namespace().unwrap_or_default();
        let (found, source) = match &b.spec.credentials_secret_ref {
            Some(r) => (self.read_secret(&namespace, &r.name).await?, format!("Secret {namespace}/{}", r.name)),
            None => match &self.defaults.credentials {
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
            },
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
        Ok(CloudTarget { region, project_id, credentials: found.credentials })
    }

    /// Whether this is the operator's default credentials Secret (used by every binding that
    /// names none).
    pub fn is_default_secret(&self, namespace: &str, name: &str) -> bool {
        matches!(&self.defaults.credentials, DefaultCredentials::Secret { namespace: ns, name: n } if ns == namespace && n == name)
    }
}
