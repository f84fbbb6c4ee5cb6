//! Plain-text tables of test results: Dice per class and the means of Dice and HD95 (mm), both
//! in TransUNet's convention.

use ctrcl_train::tester::TestReport;
use std::fmt::Write;

/// One row per (run, student): method, student, per-class Dice and the mean.
pub fn report_table(reports: &[TestReport]) -> String {
    let Some(first) = reports.first() else {
        return String::new();
    };
    let classes = &first.class_names[1..];
    let mut s = String::new();
    let _ = write!(s, "{:<12} {:<12} {:<10}", "method", "student", "model");
    for c in classes {
        let _ = write!(s, " {:>8}", c);
    }
    let _ = writeln!(s, " {:>9} {:>10}", "mean Dice", "mean HD95");
    let width = 36 + 9 * classes.len() + 21;
    let _ = writeln!(s, "{}", "-".repeat(width));
    for r in reports {
        for st in &r.students {
            let _ = write!(
                s,
                "{:<12} {:<12} {:<10}",
                r.method,
                st.role.name(),
                st.architecture
            );
            for d in &st.scores.per_class {
                let _ = write!(s, " {:>8.4}", d);
            }
            let hd95 =
                st.transunet.iter().map(|m| m.hd95).sum::<f64>() / st.transunet.len().max(1) as f64;
            let _ = writeln!(s, " {:>9.4} {:>10.2}", st.scores.mean, hd95);
        }
    }
    s
}
