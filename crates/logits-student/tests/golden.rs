//! Response losses against the NumPy reference (scripts/kd_reference.py, complex-step
//! gradients): losses to 1e-6 relative; gradients, which the API returns in f32, to 1e-6
//! relative of the largest gradient entry.

use logits_student::losses::response::{Divergence, TeacherTargets, TopKMode, response_loss};

/// The cases under `key` of fixtures/golden/kd_response.json.
fn golden(key: &str) -> Vec<serde_json::Value> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/golden/kd_response.json"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("golden file")).expect("json");
    v[key].as_array().expect("golden cases").clone()
}

#[test]
fn response_losses_match_numpy_reference() {
    let cases = golden("cases");
    assert_eq!(cases.len(), 32);
    for (n, c) in cases.iter().enumerate() {
        let f64s = |k: &str| -> Vec<f64> {
            c[k].as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        };
        let s: Vec<f32> = f64s("student_logits").iter().map(|&x| x as f32).collect();
        let ids: Vec<u32> = c["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let lp = f64s("teacher_logprobs");
        let t = c["temperature"].as_f64().unwrap();
        let div = match c["divergence"].as_str().unwrap() {
            "forward_kl" => Divergence::ForwardKl,
            "reverse_kl" => Divergence::ReverseKl,
            other => Divergence::Jsd(other.trim_start_matches("jsd:").parse().unwrap()),
        };
        let mode = if c["mode"] == "tail" {
            TopKMode::TailBucket
        } else {
            TopKMode::Renormalize
        };
        let mut g = vec![0.0f32; s.len()];
        let l = response_loss(
            &s,
            TeacherTargets {
                ids: &ids,
                logprobs: &lp,
            },
            t,
            div,
            mode,
            1.0,
            &mut g,
        );
        let want = c["loss"].as_f64().unwrap();
        assert!(
            (l - want).abs() <= 1e-6 * want.abs().max(1e-12),
            "case {n} {div:?} {mode:?}: loss {l} vs {want}"
        );
        let wg = f64s("grad");
        let gmax = wg.iter().fold(0.0f64, |a, b| a.max(b.abs()));
        for (i, (a, b)) in g.iter().zip(&wg).enumerate() {
            assert!(
                (*a as f64 - b).abs() <= 1e-6 * gmax.max(1e-12) + 1e-9,
                "case {n} {div:?} {mode:?} grad {i}: {a} vs {b}"
            );
        }
    }
}

#[test]
fn feature_losses_match_numpy_reference() {
    let cases = golden("feature_cases");
    assert_eq!(cases.len(), 4);
    for (n, c) in cases.iter().enumerate() {
        let f32s = |k: &str| -> Vec<f32> {
            c[k].as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        };
        let (s, t) = (f32s("student"), f32s("teacher"));
        let dim = c["dim"].as_u64().unwrap() as usize;
        let mut g = vec![0.0f32; s.len()];
        let l = match c["loss_name"].as_str().unwrap() {
            "mse" => logits_student::losses::feature::mse(&s, &t, 1.0, &mut g),
            _ => logits_student::losses::feature::cosine(&s, &t, dim, 1.0, &mut g),
        };
        let want = c["loss"].as_f64().unwrap();
        assert!(
            (l - want).abs() <= 1e-6 * want.abs(),
            "case {n}: loss {l} vs {want}"
        );
        let wg: Vec<f64> = c["grad"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        let gmax = wg.iter().fold(0.0f64, |a, b| a.max(b.abs()));
        for (i, (a, b)) in g.iter().zip(&wg).enumerate() {
            assert!(
                (*a as f64 - b).abs() <= 1e-6 * gmax + 1e-9,
                "case {n} grad {i}: {a} vs {b}"
            );
        }
    }
}

#[test]
fn relation_losses_match_numpy_reference() {
    use logits_student::losses::relation::Relation;
    let cases = golden("relation_cases");
    assert_eq!(cases.len(), 8);
    let matrix = |x: &serde_json::Value| -> ndarray::Array2<f32> {
        let rows: Vec<Vec<f32>> = x
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap() as f32)
                    .collect()
            })
            .collect();
        ndarray::Array2::from_shape_fn((rows.len(), rows[0].len()), |(i, j)| rows[i][j])
    };
    for (n, c) in cases.iter().enumerate() {
        let (s, t) = (matrix(&c["student"]), matrix(&c["teacher"]));
        let rel = match c["loss_name"].as_str().unwrap() {
            "rkd_distance" => Relation::RkdDistance,
            "rkd_angle" => Relation::RkdAngle,
            "sp" => Relation::Sp,
            _ => Relation::Pkt,
        };
        let (l, g) = rel.loss(s.view(), t.view());
        let want = c["loss"].as_f64().unwrap();
        assert!(
            (l - want).abs() <= 1e-6 * want.abs(),
            "case {n} {rel:?}: loss {l} vs {want}"
        );
        let wg = matrix(&c["grad"]);
        let gmax = wg.iter().fold(0.0f32, |a, b| a.max(b.abs())) as f64;
        for ((i, a), b) in g.indexed_iter().zip(wg.iter()) {
            assert!(
                (*a as f64 - *b as f64).abs() <= 1e-6 * gmax + 1e-9,
                "case {n} {rel:?} grad {i:?}: {a} vs {b}"
            );
        }
    }
}

#[test]
fn sampled_kd_matches_numpy_reference() {
    let cases = golden("sampled_cases");
    assert_eq!(cases.len(), 2);
    for (n, c) in cases.iter().enumerate() {
        let nums = |k: &str| -> Vec<f64> {
            c[k].as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        };
        let s: Vec<f32> = nums("student_logits").iter().map(|&x| x as f32).collect();
        let ids: Vec<u32> = nums("ids").iter().map(|&x| x as u32).collect();
        let counts: Vec<u32> = nums("counts").iter().map(|&x| x as u32).collect();
        let t = c["temperature"].as_f64().unwrap();
        let mut g = vec![0.0f32; s.len()];
        let l = logits_student::losses::response::sampled_kd(&s, &ids, &counts, t, 1.0, &mut g);
        let want = c["loss"].as_f64().unwrap();
        assert!(
            (l - want).abs() <= 1e-6 * want.abs(),
            "case {n}: loss {l} vs {want}"
        );
        let wg = nums("grad");
        let gmax = wg.iter().fold(0.0f64, |a, b| a.max(b.abs()));
        for (i, (a, b)) in g.iter().zip(&wg).enumerate() {
            assert!(
                (*a as f64 - b).abs() <= 1e-6 * gmax + 1e-9,
                "case {n} grad {i}: {a} vs {b}"
            );
        }
    }
}
