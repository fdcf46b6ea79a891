use keel_core::Status;

use super::Thresholds;

/// golib's rise/fall state machine, without time or I/O.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Machine {
    pub(crate) status: Status,
    pub(crate) rise: u32,
    pub(crate) fall: u32,
    thresholds: Thresholds,
    /// Whether the last result was a (possibly degraded) success.
    last_succeeded: Option<bool>,
    /// The last result.
    last_outcome: Option<Status>,
}

impl Machine {
    /// Components start KO until their first checks prove otherwise.
    pub(crate) fn new(thresholds: Thresholds) -> Self {
        Self { status: Status::Ko, rise: 0, fall: 0, thresholds, last_succeeded: None, last_outcome: None }
    }

    /// Applies one check result; returns the new status.
    ///
    /// A `Warn` report is a degraded success: it rises out of KO like a
    /// success, never rises above WARN, and moves OK down to WARN at once.
    pub(crate) fn apply(&mut self, outcome: Status) -> Status {
        let t = self.thresholds;
        self.last_succeeded = Some(outcome != Status::Ko);
        self.last_outcome = Some(outcome);
        match outcome {
            Status::Ko => {
                self.rise = 0;
                self.fall += 1;
                let (threshold, next) = match self.status {
                    Status::Ok => (t.fall_warn, Status::Warn),
                    Status::Warn => (t.fall_ko, Status::Ko),
                    Status::Ko => {
                        self.fall = 0;
                        return self.status;
                    }
                };
                if self.fall >= threshold.max(1) {
                    self.status = next;
                    self.fall = 0;
                }
            }
            Status::Ok | Status::Warn => {
                self.fall = 0;
                match self.status {
                    Status::Ko => {
                        self.rise += 1;
                        if self.rise >= t.rise_ko.max(1) {
                            self.status = Status::Warn;
                            self.rise = 0;
                        }
                    }
                    Status::Warn if outcome == Status::Ok => {
                        self.rise += 1;
                        if self.rise >= t.rise_warn.max(1) {
                            self.status = Status::Ok;
                            self.rise = 0;
                        }
                    }
                    Status::Warn => self.rise = 0,
                    Status::Ok if outcome == Status::Warn => {
                        self.status = Status::Warn;
                        self.rise = 0;
                    }
                    Status::Ok => {}
                }
            }
        }
        self.status
    }

    /// Whether the component is on its way down: the last check failed and
    /// it is not KO yet.
    pub(crate) fn falling(&self) -> bool {
        self.last_succeeded == Some(false) && self.status != Status::Ko
    }

    /// Whether the status is where the last result leads and stays: OK
    /// after OK, WARN after WARN, KO after a failure (not on the way up or
    /// down).
    pub(crate) fn settled(&self) -> bool {
        self.last_outcome == Some(self.status)
    }

    /// Whether the component is on its way up: the last check succeeded and
    /// it is not OK yet.
    pub(crate) fn rising(&self) -> bool {
        self.last_succeeded == Some(true) && self.status != Status::Ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Status::{Ko, Ok as Up, Warn};

    fn machine(fall_warn: u32, fall_ko: u32, rise_ko: u32, rise_warn: u32) -> Machine {
        Machine::new(Thresholds { fall_warn, fall_ko, rise_ko, rise_warn })
    }

    #[test]
    fn rises_two_by_two() {
        let mut m = machine(1, 1, 2, 2);
        assert_eq!(m.status, Ko);
        assert_eq!([m.apply(Up), m.apply(Up), m.apply(Up), m.apply(Up)], [Ko, Warn, Warn, Up]);
    }

    #[test]
    fn falls_two_by_two() {
        let mut m = machine(2, 2, 1, 1);
        m.apply(Up);
        m.apply(Up);
        assert_eq!(m.status, Up);
        assert_eq!([m.apply(Ko), m.apply(Ko), m.apply(Ko), m.apply(Ko)], [Up, Warn, Warn, Ko]);
    }

    #[test]
    fn interrupted_rises_never_leave_ko() {
        let mut m = machine(1, 1, 3, 1);
        for _ in 0..10 {
            m.apply(Up);
            m.apply(Up);
            assert_eq!(m.apply(Ko), Ko);
        }
    }

    #[test]
    fn rising_and_falling_span_the_whole_climb() {
        let mut m = machine(1, 1, 1, 1);
        assert!(!m.rising() && !m.falling(), "nothing checked yet");
        m.apply(Up);
        assert_eq!(m.status, Warn);
        assert!(m.rising(), "still below OK after a success");
        m.apply(Up);
        assert!(!m.rising(), "OK is the top");
        m.apply(Ko);
        assert!(m.falling());
        m.apply(Ko);
        assert!(!m.falling(), "KO is the bottom");
    }

    /// Settled means the status is where the last result leads: not before
    /// any check, not mid-climb or mid-fall, and at WARN for a component
    /// that reports WARN.
    #[test]
    fn settled_is_where_the_last_result_leads() {
        let mut m = machine(1, 2, 1, 1);
        assert!(!m.settled(), "nothing checked yet");
        m.apply(Up);
        assert!(!m.settled() && m.status == Warn, "on the way up");
        m.apply(Up);
        assert!(m.settled() && m.status == Up);
        m.apply(Ko);
        m.apply(Ko);
        assert!(!m.settled() && m.status == Warn, "on the way down");
        m.apply(Ko);
        assert!(m.settled() && m.status == Ko);
        let mut warned = machine(1, 1, 1, 1);
        warned.apply(Warn);
        assert!(warned.settled() && warned.status == Warn, "WARN reports settle at WARN");
    }

    #[test]
    fn warn_reports_are_degraded_successes() {
        let mut m = machine(1, 1, 1, 1);
        assert_eq!(m.apply(Warn), Warn, "rises out of KO");
        assert_eq!(m.apply(Warn), Warn, "never above WARN");
        assert_eq!(m.apply(Up), Up);
        assert_eq!(m.apply(Warn), Warn, "OK drops to WARN at once");
    }
}
