/*
 * faults.h: fault injection for the tests. Only the library the tests link
 * (pmu_core_faults, built with -DPMU_TEST_FAULTS) has it; in the engine
 * everyone else builds, PMU__FAULT(point) is the constant 0.
 */
#ifndef PMU_FAULTS_H
#define PMU_FAULTS_H

enum pmu__fault_point {
  PMU__FAULT_SQE,       /* pmu__get_sqe finds the SQ full */
  PMU__FAULT_SERIALIZE, /* serialize() cannot allocate the response */
  PMU__FAULT_WAIT,      /* the ring's wait fails with EFAULT */
  PMU__FAULT_SEG,       /* a piece of a streamed answer cannot be allocated */
  PMU__FAULT_POINTS
};

#ifdef PMU_TEST_FAULTS
/* 1 when this call at `point` must fail, as set by pmu_test_fault(). */
int pmu__fault(int point);
#define PMU__FAULT(point) pmu__fault(point)
#else
#define PMU__FAULT(point) 0
#endif

#endif /* PMU_FAULTS_H */
