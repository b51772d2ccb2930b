//! Trigger type → builder.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use super::{BuildContext, Param, Scaler, ScalerError, TriggerSpec};

/// Makes scalers of one trigger type. Builders live as long as the registry, so they are
/// where shared client pools belong.
#[async_trait]
pub trait ScalerBuilder: Send + Sync {
    /// Builds a scaler for a trigger. Parameter errors are `config` errors naming the
    /// trigger and the parameter; nothing is connected yet where that can wait for `poll`.
    async fn build(
        &self,
        spec: &TriggerSpec,
        ctx: &BuildContext,
    ) -> Result<Box<dyn Scaler>, ScalerError>;

    /// The parameters this builder's scalers read (see [`Param`]): their documentation
    /// and the unknown-key warning come from it.
    fn parameters(&self) -> &'static [Param] {
        &[]
    }
}

/// Maps trigger types to builders.
#[derive(Clone, Default)]
pub struct Registry {
    builders: BTreeMap<String, Arc<dyn ScalerBuilder>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.builders.keys()).finish()
    }
}

impl Registry {
    /// An empty registry.
    #[must_use]
    pub fn new() -> Self {
        Registry::default()
    }

    /// Registers (or replaces) the builder of a trigger type.
    pub fn register(
        &mut self,
        type_name: impl Into<String>,
        builder: impl ScalerBuilder + 'static,
    ) -> &mut Self {
        self.register_arc(type_name, Arc::new(builder))
    }

    /// Registers a shared builder.
    pub fn register_arc(
        &mut self,
        type_name: impl Into<String>,
        builder: Arc<dyn ScalerBuilder>,
    ) -> &mut Self {
        self.builders.insert(type_name.into(), builder);
        self
    }

    /// The registered type names.
    pub fn types(&self) -> impl Iterator<Item = &str> {
        self.builders.keys().map(String::as_str)
    }

    /// The declared parameters of a trigger type, if it is registered.
    #[must_use]
    pub fn parameters(&self, type_name: &str) -> Option<&'static [Param]> {
        self.builders.get(type_name).map(|b| b.parameters())
    }

    /// Whether a trigger type is registered.
    #[must_use]
    pub fn contains(&self, type_name: &str) -> bool {
        self.builders.contains_key(type_name)
    }

    /// Builds a scaler for a trigger.
    pub async fn build(
        &self,
        spec: &TriggerSpec,
        ctx: &BuildContext,
    ) -> Result<Box<dyn Scaler>, ScalerError> {
        let Some(builder) = self.builders.get(&spec.type_name) else {
            return Err(ScalerError::new(
                super::ErrorKind::Config,
                &spec.label,
                format!(
                    "unknown trigger type {:?}; this build knows: {}",
                    spec.type_name,
                    self.types().collect::<Vec<_>>().join(", ")
                ),
            ));
        };
        builder.build(spec, ctx).await
    }
}
