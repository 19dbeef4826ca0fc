//! Reading and writing HF checkpoints (`model.safetensors`, or shards named
//! by `model.safetensors.index.json`) through the `safetensors` crate.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, TensorView};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use super::{Result, TorchError, file_error, write_error};

/// The safetensors files of a checkpoint directory.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&index).map_err(|_| {
        file_error(
            dir,
            "neither model.safetensors nor model.safetensors.index.json is here",
        )
    })?;
    let json: serde_json::Value = crate::json::from_str_strict(&text)
        .map_err(|e| file_error(&index, format!("malformed JSON: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| file_error(&index, "no `weight_map` object"))?;
    let mut files: Vec<PathBuf> = map
        .values()
        .filter_map(|v| v.as_str())
        .map(|f| dir.join(f))
        .collect();
    files.sort();
    files.dedup();
    Ok(files)
}

/// The layer number of a parameter name such as `gpt_neox.layers.3.mlp...`
/// or `transformer.h.3.attn...`.
fn layer_index(name: &str) -> Option<usize> {
    let parts: Vec<&str> = name.split('.').collect();
    parts
        .windows(2)
        .find(|w| w[0] == "layers" || w[0] == "h")
        .and_then(|w| w[1].parse().ok())
}

fn kind_of(dtype: Dtype) -> Option<Kind> {
    match dtype {
        Dtype::F32 => Some(Kind::Float),
        Dtype::F16 => Some(Kind::Half),
        Dtype::BF16 => Some(Kind::BFloat16),
        Dtype::F64 => Some(Kind::Double),
        _ => None,
    }
}

fn dtype_of(kind: Kind) -> Option<Dtype> {
    match kind {
        Kind::Float => Some(Dtype::F32),
        Kind::Half => Some(Dtype::F16),
        Kind::BFloat16 => Some(Dtype::BF16),
        Kind::Double => Some(Dtype::F64),
        _ => None,
    }
}

/// Copies every variable of `vs` from the checkpoint in `dir`, checking
/// names, shapes and dtypes. A missing or misshapen tensor is an error that
/// names it (and both shapes).
pub fn load_into(vs: &VarStore, dir: &Path) -> Result<()> {
    load_into_except(vs, dir, &[])
}

/// [`load_into`], except that the variables named in `fresh` may be absent
/// from the checkpoint (they keep their values): a new head on a loaded body.
pub fn load_into_except(vs: &VarStore, dir: &Path, fresh: &[&str]) -> Result<()> {
    let mut wanted: HashMap<String, Tensor> = vs.variables();
    let layers: std::collections::HashSet<usize> =
        wanted.keys().filter_map(|n| layer_index(n)).collect();
    let device = vs.device();
    for path in weight_files(dir)? {
        let file = File::open(&path).map_err(|e| file_error(&path, e))?;
        // SAFETY: the map is read-only and lives only inside this loop
        // iteration; a checkpoint changed on disk while loading is the user's
        // race, and can at worst give wrong weights, which the shape checks
        // below do not hide.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| file_error(&path, e))?;
        let tensors = SafeTensors::deserialize(&map)
            .map_err(|e| file_error(&path, format!("corrupt safetensors: {e}")))?;
        let mut entries = tensors.tensors();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, view) in entries {
            // Tensors the model has no variable for (recomputed buffers, a tied
            // `lm_head.weight`, another head) are skipped.
            let Some(var) = wanted.remove(&name) else {
                // ...but a layer the model does not have means the config
                // describes another model than the weights.
                if let Some(i) = layer_index(&name).filter(|i| !layers.contains(i)) {
                    return Err(TorchError::Tensor {
                        name,
                        message: format!(
                            "layer {i} is in {} but the config's model has {} layers (num_hidden_layers / n_layer)",
                            path.display(),
                            layers.len()
                        ),
                    });
                }
                continue;
            };
            let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
            if shape != var.size() {
                return Err(TorchError::Tensor {
                    name,
                    message: format!(
                        "shape {:?} in {} but the model expects {:?}",
                        shape,
                        path.display(),
                        var.size()
                    ),
                });
            }
            let kind = kind_of(view.dtype()).ok_or_else(|| TorchError::Tensor {
                name: name.clone(),
                message: format!("unsupported dtype {:?}", view.dtype()),
            })?;
            let src = Tensor::f_from_data_size(view.data(), &shape, kind)?.to_device(device);
            if src.f_isfinite()?.f_all()?.int64_value(&[]) == 0 {
                return Err(TorchError::Tensor {
                    name,
                    message: format!("holds NaN or infinite values in {}", path.display()),
                });
            }
            let mut var = var;
            tch::no_grad(|| var.copy_(&src.to_kind(var.kind())));
        }
    }
    if let Some(missing) = wanted.keys().filter(|k| !fresh.contains(&k.as_str())).min() {
        return Err(TorchError::Tensor {
            name: missing.clone(),
            message: format!("missing from the checkpoint in {}", dir.display()),
        });
    }
    Ok(())
}

/// Writes `config.json` and a single `model.safetensors` (tensors in their
/// current dtype) into `dir`, through temporary names and renames.
pub fn save(vs: &VarStore, config: &serde_json::Value, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| write_error(dir, e))?;
    let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let vars: Vec<(String, Tensor)> = vars.into_iter().collect();
    write_tensors(&vars, &dir.join("model.safetensors"))?;
    let cfg = dir.join("config.json");
    let tmp = dir.join(".config.json.tmp");
    std::fs::write(
        &tmp,
        serde_json::to_string_pretty(config).expect("a JSON value serialises"),
    )
    .map_err(|e| write_error(&tmp, e))?;
    std::fs::rename(&tmp, &cfg).map_err(|e| write_error(&cfg, e))?;
    Ok(())
}

/// Every tensor of one safetensors file, on `device`, by name.
pub fn read_tensors(path: &Path, device: Device) -> Result<HashMap<String, Tensor>> {
    let bytes = std::fs::read(path).map_err(|e| file_error(path, e))?;
    let tensors = SafeTensors::deserialize(&bytes)
        .map_err(|e| file_error(path, format!("corrupt safetensors: {e}")))?;
    let mut out = HashMap::new();
    for (name, view) in tensors.tensors() {
        let kind = kind_of(view.dtype()).ok_or_else(|| TorchError::Tensor {
            name: name.clone(),
            message: format!("unsupported dtype {:?}", view.dtype()),
        })?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        out.insert(
            name,
            Tensor::f_from_data_size(view.data(), &shape, kind)?.to_device(device),
        );
    }
    Ok(out)
}

/// Writes named tensors to one safetensors file at `path` (through a
/// temporary name and a rename).
pub fn write_tensors(tensors: &[(String, Tensor)], path: &Path) -> Result<()> {
    let mut buffers: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t.to_device(Device::Cpu).contiguous();
        let dtype = dtype_of(t.kind()).ok_or_else(|| TorchError::Tensor {
            name: name.clone(),
            message: format!("cannot save kind {:?}", t.kind()),
        })?;
        let numel = t.numel();
        let mut bytes = vec![0u8; numel * t.kind().elt_size_in_bytes()];
        t.f_copy_data_u8(&mut bytes, numel)?;
        buffers.push((
            name.clone(),
            dtype,
            t.size().iter().map(|&d| d as usize).collect(),
            bytes,
        ));
    }
    let views: Vec<(String, TensorView)> = buffers
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            TensorView::new(*dtype, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| TorchError::Tensor {
                    name: name.clone(),
                    message: e.to_string(),
                })
        })
        .collect::<Result<_>>()?;
    let tmp = path.with_extension("safetensors.tmp");
    let mut metadata = HashMap::new();
    metadata.insert("format".to_string(), "pt".to_string());
    safetensors::serialize_to_file(views, Some(metadata), &tmp)
        .map_err(|e| write_error(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| write_error(path, e))?;
    Ok(())
}
